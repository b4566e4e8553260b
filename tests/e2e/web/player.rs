//! Browser tests of the player page (filled in by its page's work).
