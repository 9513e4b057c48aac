//! bertkit-finetune: not built yet (see the issue tracker).
