//! bertkit-train: not built yet (see the issue tracker).
