//! Browser tests of the admin page (filled in by its page's work).
