//! `danmaku import` and `danmaku export`: a room's history to and from a
//! file, through the server's routes (docs/players.md).

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use super::DEFAULT_URL;

/// A file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// bilibili XML.
    Xml,
    /// JSON lines: one history item per line.
    Jsonl,
}

/// Options of `danmaku import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The server's base URL.
    #[arg(long, default_value = DEFAULT_URL, env = "DANMAKU_URL")]
    url: String,
    /// An admin token (see `danmaku token --role admin`).
    #[arg(long, env = "DANMAKU_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The room to load the file into.
    #[arg(long)]
    room: String,
    /// The file's format [default: from its extension: .xml, .jsonl, .ndjson].
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// The file.
    file: PathBuf,
}

/// Options of `danmaku export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The server's base URL.
    #[arg(long, default_value = DEFAULT_URL, env = "DANMAKU_URL")]
    url: String,
    /// The room to export.
    #[arg(long)]
    room: String,
    /// The format to write.
    #[arg(long, value_enum)]
    format: Format,
    /// The file to write [default: standard output].
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Uploads the file and prints the server's report; a refused file (or
/// any other refusal) exits non-zero with the server's error.
pub async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let format = match args.format {
        Some(f) => f,
        None => match args.file.extension().and_then(|e| e.to_str()) {
            Some("xml") => Format::Xml,
            Some("jsonl" | "ndjson") => Format::Jsonl,
            _ => bail!(
                "cannot tell the format of {} from its extension: give --format xml or jsonl",
                args.file.display()
            ),
        },
    };
    let content_type = match format {
        Format::Xml => "application/xml",
        Format::Jsonl => "application/x-ndjson",
    };
    let body = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let url = format!(
        "{}/api/v1/rooms/{}/import",
        args.url.trim_end_matches('/'),
        args.room
    );
    let mut req = reqwest::Client::new()
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body);
    if let Some(token) = &args.token {
        req = req.bearer_auth(token);
    }
    let text = super::answer(req, &url).await?;
    println!("{text}");
    Ok(())
}

/// Counts what an export wrote, and says so on stderr about once a second.
struct Progress {
    count: u64,
    last: Instant,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            count: 0,
            last: Instant::now(),
        }
    }

    fn add(&mut self, n: u64) {
        self.count += n;
        if self.last.elapsed() >= Duration::from_secs(1) {
            eprintln!("exported {} danmaku so far", self.count);
            self.last = Instant::now();
        }
    }
}

/// Counts the danmaku of an XML export as its chunks arrive, by the `<d `
/// that opens each (a text's `<` is escaped, so only a danmaku has one),
/// including one split across two chunks.
#[derive(Default)]
struct OpenTags {
    /// The last bytes seen, which the next chunk may complete to a tag.
    tail: Vec<u8>,
}

impl OpenTags {
    const TAG: &'static [u8] = b"<d ";
    /// Enough of the previous chunks to complete a tag with the next.
    const KEEP: usize = Self::TAG.len() - 1;

    /// The tags that `chunk` completes: those inside it and the one that
    /// began in the chunks before it, if any.
    fn count(&mut self, chunk: &[u8]) -> u64 {
        let tags = |bytes: &[u8]| {
            bytes
                .windows(Self::TAG.len())
                .filter(|w| *w == Self::TAG)
                .count()
        };
        // The tail and the first bytes of the chunk: every tag found here
        // starts in the tail (too short to hold one), so none is counted
        // twice.
        let mut seam = std::mem::take(&mut self.tail);
        seam.extend_from_slice(&chunk[..chunk.len().min(Self::KEEP)]);
        let found = tags(&seam) + tags(chunk);
        let last = if chunk.len() >= Self::KEEP {
            chunk
        } else {
            &seam
        };
        self.tail = last[last.len().saturating_sub(Self::KEEP)..].to_vec();
        found as u64
    }
}

/// Writes the room's history to the file or stdout: XML streamed from the
/// server's XML route, JSON lines from the history route a page at a time.
pub async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let mut out: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let base = format!(
        "{}/api/v1/rooms/{}",
        args.url.trim_end_matches('/'),
        args.room
    );
    let client = reqwest::Client::new();
    let mut progress = Progress::new();
    match args.format {
        Format::Xml => {
            let url = format!("{base}/danmaku.xml");
            let mut res = checked(client.get(&url).send().await, &url).await?;
            let mut tags = OpenTags::default();
            while let Some(chunk) = res
                .chunk()
                .await
                .context("the export was cut short; the file is incomplete")?
            {
                out.write_all(&chunk)?;
                progress.add(tags.count(&chunk));
            }
        }
        Format::Jsonl => {
            // Pages as large as the server gives (`limits.max_history`,
            // whatever it is set to), until one comes back empty.
            let mut after = 0u64;
            loop {
                let url = format!("{base}/danmaku?after={after}");
                let page: Value = checked(client.get(&url).send().await, &url)
                    .await?
                    .json()
                    .await
                    .context("the history page is not JSON")?;
                let items = page["items"].as_array().cloned().unwrap_or_default();
                for item in &items {
                    serde_json::to_writer(&mut out, item)?;
                    out.write_all(b"\n")?;
                }
                progress.add(items.len() as u64);
                match items.last().and_then(|d| d["id"].as_u64()) {
                    Some(id) => after = id,
                    None => break,
                }
            }
        }
    }
    out.flush()?;
    eprintln!("exported {} danmaku", progress.count);
    Ok(())
}

/// The response, if the server answered with success.
async fn checked(
    sent: reqwest::Result<reqwest::Response>,
    url: &str,
) -> anyhow::Result<reqwest::Response> {
    let res = sent.with_context(|| format!("cannot reach {url}"))?;
    let status = res.status();
    if !status.is_success() {
        let text = res.text().await.unwrap_or_default();
        bail!("{status}: {text}");
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An export of three danmaku, one of whose texts reads like a tag.
    const EXPORT: &[u8] = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><i><chatid>0</chatid>\n\
        <d p=\"1,1,25,16777215,0,0,ab,1\">a</d>\n<d p=\"2,1,25,0,0,0,ab,2\">&lt;d x</d>\n\
        <d p=\"3,1,25,0,0,0,ab,3\">c</d>\n</i>\n";

    #[test]
    fn counts_every_danmaku_however_the_export_is_split() {
        let whole = |chunks: &[&[u8]]| {
            let mut tags = OpenTags::default();
            chunks.iter().map(|c| tags.count(c)).sum::<u64>()
        };
        assert_eq!(whole(&[EXPORT]), 3);
        for i in 0..=EXPORT.len() {
            let (a, b) = EXPORT.split_at(i);
            assert_eq!(whole(&[a, b]), 3, "split at {i}");
            // A one-byte (or empty) chunk between: the tail spans it.
            for j in i..=(i + 2).min(EXPORT.len()) {
                let (b, c) = b.split_at(j - i);
                assert_eq!(whole(&[a, b, c]), 3, "split at {i} and {j}");
            }
        }
        let bytes: Vec<&[u8]> = EXPORT.chunks(1).collect();
        assert_eq!(whole(&bytes), 3, "a byte at a time");
    }
}
