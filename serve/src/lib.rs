//! bertkit-serve: not built yet (see the issue tracker).
