//! A PostgreSQL database of the run's own, so that every run starts from
//! empty rooms and leaves nothing behind.
//!
//! It is made and dropped with `psql`, PostgreSQL's own client, which
//! takes the same URLs as the server: the bench itself speaks no
//! PostgreSQL.

use std::process::Command;

use anyhow::{bail, Context};

/// A database created for this run; dropped with the value.
pub struct Database {
    /// The `--store-url` with its database replaced by this run's.
    pub url: String,
    /// The same server's `postgres` database, to create and drop from.
    admin_url: String,
    name: String,
}

impl Database {
    /// Creates `danmaku_bench_<pid>` on the server of `url` (dropping a
    /// leftover of that name first).
    pub fn create(url: &str) -> anyhow::Result<Database> {
        let name = format!("danmaku_bench_{}", std::process::id());
        let (Some(admin_url), Some(run_url)) =
            (with_database(url, "postgres"), with_database(url, &name))
        else {
            bail!("--store-url {url} is not a postgres:// URL");
        };
        // Each -c runs in its own transaction, as DROP and CREATE DATABASE need.
        psql(
            &admin_url,
            &[
                &drop_statement(&name),
                &format!("CREATE DATABASE \"{name}\""),
            ],
        )
        .with_context(|| format!("cannot create the run's database {name}"))?;
        Ok(Database {
            url: run_url,
            admin_url,
            name,
        })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Err(e) = psql(&self.admin_url, &[&drop_statement(&self.name)]) {
            eprintln!(
                "danmaku bench: could not drop the run's database {}: {e:#}",
                self.name
            );
        }
    }
}

/// Drops `name` even with nodes still connected (a failed run's).
fn drop_statement(name: &str) -> String {
    format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")
}

/// Runs SQL statements with `psql` against `url`.
fn psql(url: &str, statements: &[&str]) -> anyhow::Result<()> {
    let mut cmd = Command::new("psql");
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url]);
    for s in statements {
        cmd.args(["-c", s]);
    }
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "a run with a postgres:// --store-url needs `psql` (PostgreSQL's client) on PATH \
             to create and drop its database: install it (Debian: postgresql-client)"
        ),
        Err(e) => return Err(e).context("cannot run psql"),
    };
    if !out.status.success() {
        bail!("psql: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// `url` (`postgres://` or `postgresql://`) naming database `db` instead
/// of its own, with its user, host and parameters kept.
fn with_database(url: &str, db: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "postgres" && scheme != "postgresql" {
        return None;
    }
    // The authority ends at the path, the query or the fragment (a `/` in
    // a password must be percent-encoded).
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    let params = after.find(['?', '#']).map_or("", |at| &after[at..]);
    Some(format!("{scheme}://{authority}/{db}{params}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_names_another_database_and_keeps_the_rest() {
        let cases = [
            (
                "postgres://postgres@127.0.0.1:5432/danmaku",
                "postgres://postgres@127.0.0.1:5432/x",
            ),
            (
                "postgresql://u:p%2Fw@db:5433/d?sslmode=disable",
                "postgresql://u:p%2Fw@db:5433/x?sslmode=disable",
            ),
            ("postgres://localhost", "postgres://localhost/x"),
            (
                "postgres://h?sslmode=require",
                "postgres://h/x?sslmode=require",
            ),
        ];
        for (url, want) in cases {
            assert_eq!(with_database(url, "x").as_deref(), Some(want), "{url}");
        }
        assert_eq!(with_database("redis://127.0.0.1:6379", "x"), None);
        assert_eq!(with_database("127.0.0.1:5432", "x"), None);
    }
}
