//! Browser tests of the overlay page (filled in by its page's work).
