//! Browser tests of the wall page (filled in by its page's work).
