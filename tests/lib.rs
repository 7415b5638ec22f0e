//! Integration tests of Palisade live in this package's `tests/` folder; this library is empty.
