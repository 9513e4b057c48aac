//! bertkit-export: not built yet (see the issue tracker).
