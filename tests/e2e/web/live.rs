//! Browser tests of the live page (filled in by its page's work).
