//! The sensitive-word filter and its hot-reloaded handle.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, SystemTime};

use aho_corasick::AhoCorasick;

use super::{fold, folds_to_itself};
use crate::config::FilterAction;
use crate::error::{ApiError, ErrorCode};

/// Why a word list could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The file could not be read, or is not UTF-8.
    #[error("cannot read word list {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The list is too large for the matcher.
    #[error("cannot build the word matcher: {0}")]
    Build(#[from] aho_corasick::BuildError),
}

/// A compiled sensitive-word list: Aho–Corasick over the folded words, so
/// one pass over a text finds every listed word whatever its case or width.
#[derive(Debug)]
pub struct WordFilter {
    matcher: AhoCorasick,
    action: FilterAction,
}

impl WordFilter {
    /// Compiles a list: one word or phrase a line, surrounding white space
    /// trimmed; blank lines and lines starting with `#` are ignored.
    pub fn new(list: &str, action: FilterAction) -> Result<WordFilter, FilterError> {
        let words = list
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|w| w.chars().flat_map(fold).collect::<String>())
            .filter(|w| !w.is_empty());
        Ok(WordFilter {
            matcher: AhoCorasick::new(words)?,
            action,
        })
    }

    /// Reads and compiles a list file (UTF-8).
    pub fn from_file(path: &Path, action: FilterAction) -> Result<WordFilter, FilterError> {
        let list = std::fs::read_to_string(path).map_err(|source| FilterError::Read {
            path: path.to_owned(),
            source,
        })?;
        WordFilter::new(&list, action)
    }

    /// Applies the list to a text. `reject`: a text with a listed word is
    /// refused as `blocked_content`, without saying which word (so the
    /// list cannot be probed word by word). `mask`: each character of the
    /// original text that is part of a match becomes `*`, overlapping
    /// matches included. A text with no match is returned borrowed; one
    /// that folds to itself (most) is searched without a copy.
    pub fn apply<'a>(&self, text: &'a str) -> Result<Cow<'a, str>, ApiError> {
        let folded = Folded::of(text);
        let haystack = folded.as_ref().map_or(text, |f| f.text.as_str());
        if self.action == FilterAction::Reject {
            if self.matcher.is_match(haystack) {
                return Err(ApiError::new(
                    ErrorCode::BlockedContent,
                    "text contains blocked content",
                ));
            }
            return Ok(Cow::Borrowed(text));
        }
        let mut masked: Option<Vec<bool>> = None;
        for m in self.matcher.find_overlapping_iter(haystack) {
            let (from, to) = match &folded {
                None => (m.start(), m.end()),
                Some(f) => f.original(text, m.start(), m.end()),
            };
            masked.get_or_insert_with(|| vec![false; text.len()])[from..to].fill(true);
        }
        Ok(match masked {
            None => Cow::Borrowed(text),
            Some(masked) => Cow::Owned(
                text.char_indices()
                    .map(|(i, c)| if masked[i] { '*' } else { c })
                    .collect(),
            ),
        })
    }
}

/// A folded copy of a text, with the way back to the original.
struct Folded {
    text: String,
    /// For each byte of `text`, the offset of the original character it
    /// came from (one original character may fold to several, or none).
    origin: Vec<usize>,
}

impl Folded {
    /// The folded form of `text`, or None if it folds to itself.
    fn of(text: &str) -> Option<Folded> {
        if text.chars().all(folds_to_itself) {
            return None;
        }
        let mut f = Folded {
            text: String::with_capacity(text.len()),
            origin: Vec::with_capacity(text.len()),
        };
        for (i, c) in text.char_indices() {
            for folded in fold(c) {
                f.text.push(folded);
                f.origin.resize(f.text.len(), i);
            }
        }
        Some(f)
    }

    /// The byte range of `original` whose characters produced the folded
    /// bytes `start..end` (a match, so never empty).
    fn original(&self, original: &str, start: usize, end: usize) -> (usize, usize) {
        let last = self.origin[end - 1];
        let last_len = original[last..].chars().next().map_or(0, char::len_utf8);
        (self.origin[start], last + last_len)
    }
}

/// A file's identity for change detection: a save changes its mtime (and
/// usually its length), without the cost of reading it every poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: SystemTime,
    len: u64,
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Stamp> {
        let meta = std::fs::metadata(path)?;
        Ok(Stamp {
            modified: meta.modified()?,
            len: meta.len(),
        })
    }
}

/// The word filter in force, replaced when its file changes. Cheap to
/// clone: clones share the list. Build one with [`FilterHandle::load`],
/// then [`FilterHandle::spawn_reloader`] to follow the file.
#[derive(Clone, Debug)]
pub struct FilterHandle {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    action: FilterAction,
    /// A std lock, not a swap crate: readers hold it only to clone the Arc.
    current: RwLock<Arc<WordFilter>>,
    /// The stamp of the file last read, or None after a failed look.
    seen: Mutex<Option<Stamp>>,
}

impl FilterHandle {
    /// Loads the list at `path`. Unlike a reload, a failure here is an
    /// error: a server should not start without the list it was given.
    pub fn load(path: &Path, action: FilterAction) -> Result<FilterHandle, FilterError> {
        // The stamp is taken before the read, so a write racing the read
        // leaves a stamp that differs from the file's and is read again.
        let stamp = Stamp::of(path).ok();
        let filter = WordFilter::from_file(path, action)?;
        Ok(FilterHandle {
            shared: Arc::new(Shared {
                path: path.to_owned(),
                action,
                current: RwLock::new(Arc::new(filter)),
                seen: Mutex::new(stamp),
            }),
        })
    }

    /// The filter in force now.
    pub fn current(&self) -> Arc<WordFilter> {
        let current = self.shared.current.read();
        current.unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Applies the filter in force: see [`WordFilter::apply`].
    pub fn apply<'a>(&self, text: &'a str) -> Result<Cow<'a, str>, ApiError> {
        self.current().apply(text)
    }

    /// Reloads the list if its file's mtime or length changed; says whether
    /// a new list is in force. A file that cannot be read or compiled
    /// leaves the previous list in force and logs a warning (once per
    /// change of the file, not once per poll). Blocking: file I/O.
    pub fn reload_if_changed(&self) -> bool {
        let s = &self.shared;
        let mut seen = s.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let stamp = match Stamp::of(&s.path) {
            Ok(stamp) => stamp,
            Err(e) => {
                if seen.take().is_some() {
                    warn_kept(&s.path, &e);
                }
                return false;
            }
        };
        if *seen == Some(stamp) {
            return false;
        }
        *seen = Some(stamp);
        match WordFilter::from_file(&s.path, s.action) {
            Ok(filter) => {
                *s.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(filter);
                tracing::info!(path = %s.path.display(), "word list reloaded");
                true
            }
            Err(e) => {
                warn_kept(&s.path, &e);
                false
            }
        }
    }

    /// Starts a tokio task that calls [`FilterHandle::reload_if_changed`]
    /// every `every` (`filter.reload_interval_ms`), on the blocking pool.
    /// The task ends by itself once every handle is dropped; abort the
    /// returned handle to stop it sooner. Needs a tokio runtime.
    pub fn spawn_reloader(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // The first tick is immediate; the list is fresh.
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                let handle = FilterHandle { shared };
                // A panic in a reload is a bug, but not one worth ending
                // reloads for: the next tick tries again.
                let _ = tokio::task::spawn_blocking(move || handle.reload_if_changed()).await;
            }
        })
    }
}

fn warn_kept(path: &Path, error: &dyn std::fmt::Display) {
    tracing::warn!(
        path = %path.display(),
        %error,
        "word list not reloaded; the previous list stays in force"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(list: &str, action: FilterAction) -> WordFilter {
        WordFilter::new(list, action).unwrap()
    }

    #[test]
    fn reject_ignores_case_width_and_invisible_characters() {
        let f = filter("# a comment\n\n  Bad Word \n坏\n", FilterAction::Reject);
        for blocked in [
            "a bad word!",
            "ＢＡＤ\u{3000}ＷＯＲＤ",
            "BAD W\u{200B}ORD",
            "好坏",
        ] {
            let e = f.apply(blocked).unwrap_err();
            assert_eq!(e.code, ErrorCode::BlockedContent, "{blocked}");
            assert!(!e.message.contains("bad"), "the word is not revealed");
        }
        for fine in ["badword", "a comment", "good"] {
            assert!(matches!(f.apply(fine), Ok(Cow::Borrowed(_))), "{fine}");
        }
    }

    #[test]
    fn mask_stars_the_original_characters() {
        let f = filter("bad\nword\nab\nbc", FilterAction::Mask);
        let mask = |t| f.apply(t).unwrap().into_owned();
        assert_eq!(mask("so bad"), "so ***");
        assert_eq!(mask("ＢＡＤ！"), "***！");
        assert_eq!(mask("b\u{200B}ad"), "****", "the hidden character too");
        assert_eq!(mask("BadWord"), "*******");
        assert_eq!(mask("abc"), "***", "overlapping matches both masked");
        assert_eq!(mask("fine"), "fine");
        assert!(matches!(f.apply("fine"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn mask_maps_multi_character_lower_case_back() {
        // İ folds to two characters, i and U+0307.
        let f = filter("i\u{307}x", FilterAction::Mask);
        assert_eq!(f.apply("aİxb").unwrap(), "a**b");
        let f = filter("\u{307}", FilterAction::Mask);
        assert_eq!(f.apply("İ").unwrap(), "*");
    }

    #[test]
    fn a_changed_file_is_reloaded_and_a_broken_one_keeps_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("words.txt");
        std::fs::write(&path, "apple\n").unwrap();
        let handle = FilterHandle::load(&path, FilterAction::Reject).unwrap();
        assert!(handle.apply("an apple").is_err());
        assert!(handle.apply("a banana").is_ok());
        assert!(!handle.reload_if_changed(), "unchanged");

        std::fs::write(&path, "banana\ncherry\n").unwrap();
        assert!(handle.reload_if_changed());
        assert!(handle.apply("an apple").is_ok());
        assert!(handle.apply("a banana").is_err());

        std::fs::write(&path, b"\xff\xfe not utf-8, and longer").unwrap();
        assert!(!handle.reload_if_changed());
        assert!(handle.apply("a banana").is_err(), "previous list kept");
        std::fs::remove_file(&path).unwrap();
        assert!(!handle.reload_if_changed());
        assert!(handle.apply("cherry").is_err(), "previous list kept");

        std::fs::write(&path, "apple\n").unwrap();
        assert!(handle.reload_if_changed(), "the file is back");
        assert!(handle.apply("an apple").is_err());
    }

    #[tokio::test]
    async fn the_reloader_follows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("words.txt");
        std::fs::write(&path, "apple\n").unwrap();
        let handle = FilterHandle::load(&path, FilterAction::Reject).unwrap();
        let task = handle.spawn_reloader(Duration::from_millis(10));
        std::fs::write(&path, "banana\n").unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while handle.apply("banana").is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "not reloaded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(handle.apply("apple").is_ok());
        drop(handle);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the task ends with the last handle")
            .unwrap();
    }

    #[test]
    fn a_missing_file_is_a_load_error() {
        let e = FilterHandle::load(Path::new("/nonexistent/words.txt"), FilterAction::Mask);
        assert!(matches!(e, Err(FilterError::Read { .. })));
    }
}
