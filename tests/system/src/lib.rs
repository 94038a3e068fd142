//! Tests that span several services live in `tests/`; this library is empty.
