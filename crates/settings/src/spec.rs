//! The declarations: one [`Setting`] per setting (its key, kind, default,
//! help and whether it is secret), grouped where they are read and listed
//! per binary in a [`Spec`]. Reading, validation, `--help`,
//! `--print-config` and the settings table in docs/settings.md all come from them.

use std::fmt::Write as _;

/// The prefix of every setting's environment form.
pub const ENV_PREFIX: &str = "AUCTION";

/// Variables that share the prefix but are not settings: accepted, never
/// read as one.
pub const NOT_SETTINGS: &[(&str, &str)] = &[
    ("AUCTION_CONFIG", "the settings file"),
    ("AUCTION_ID", "the auction the k6 load tests use"),
    ("AUCTION_TOKEN", "the bidder token the k6 load tests use"),
];

/// What values a setting takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A whole number from `min` to `max`.
    Number { min: u64, max: u64 },
    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
    Flag,
    /// A `host:port` listen address; port 0 asks the OS for a free port.
    Address,
    /// A comma-separated list; blank items are dropped.
    List,
    /// Text (URLs, names, secrets), checked where it is read.
    Text,
    /// One of these words.
    Choice(&'static [&'static str]),
}

/// One setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// Lower snake case, as in the TOML file: `redis_url`.
    pub key: &'static str,
    pub kind: Kind,
    /// `None`: unset unless given. A binary may give its own default
    /// ([`Spec::defaults`]).
    pub default: Option<&'static str>,
    /// One paragraph, the settings table's "meaning".
    pub help: &'static str,
    /// Never printed: `--print-config` shows only whether it is set.
    pub secret: bool,
}

impl Setting {
    /// `AUCTION_REDIS_URL` for `redis_url`.
    pub fn env_name(&self) -> String {
        env_name(self.key)
    }
}

/// The settings one binary reads.
#[derive(Debug)]
pub struct Spec {
    pub binary: &'static str,
    /// One line: what the binary is.
    pub about: &'static str,
    /// Usage lines besides the common ones (subcommands).
    pub usage: &'static [&'static str],
    /// Groups of settings, each declared where it is read.
    pub groups: &'static [&'static [Setting]],
    /// This binary's own defaults for shared settings: `(key, default)`.
    pub defaults: &'static [(&'static str, &'static str)],
}

impl Spec {
    /// Every setting of the binary, in declaration order, with the
    /// binary's own defaults applied.
    pub fn settings(&self) -> impl Iterator<Item = Setting> + '_ {
        self.groups.iter().flat_map(|group| group.iter()).map(|s| {
            let own = self
                .defaults
                .iter()
                .find(|(key, _)| *key == s.key)
                .map(|(_, default)| *default);
            Setting {
                default: own.or(s.default),
                ..*s
            }
        })
    }

    /// The setting `key` as this binary reads it.
    pub fn find(&self, key: &str) -> Option<Setting> {
        self.settings().find(|s| s.key == key)
    }

    /// `--help`: usage, then every setting with its default and help.
    pub fn help(&self) -> String {
        let name = self.binary;
        let mut out = format!("{name} {}: {}\n\nusage:\n", crate::version(), self.about);
        let _ = writeln!(out, "  {name} [--config FILE]                  run");
        let _ = writeln!(
            out,
            "  {name} [--config FILE] --print-config   print the effective settings, secrets redacted"
        );
        let _ = writeln!(out, "  {name} --help | --version");
        for line in self.usage {
            let _ = writeln!(out, "  {line}");
        }
        out.push_str(
            "\nSettings: built-in defaults, then the TOML file (--config FILE or\n\
             AUCTION_CONFIG=FILE; keys in lower case without the prefix, e.g.\n\
             sim_interval_ms = 500), then AUCTION_* environment variables. An unknown\n\
             AUCTION_* variable or file key, or a bad value, stops start-up with exit\n\
             code 2. Logs are filtered with RUST_LOG; traces are exported over OTLP/HTTP\n\
             when OTEL_EXPORTER_OTLP_ENDPOINT is set.\n\n",
        );
        for s in self.settings() {
            let _ = writeln!(out, "  {}  ({})", s.env_name(), describe(&s));
            let _ = writeln!(out, "{}", wrap(s.help, 6, 78));
        }
        out
    }
}

/// The environment form of a key: `redis_url` → `AUCTION_REDIS_URL`.
pub fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}_{}", key.to_ascii_uppercase())
}

/// The kind and default of `s` in a few words, for `--help`.
fn describe(s: &Setting) -> String {
    let default = match s.default {
        None => "unset".to_owned(),
        Some("") => "empty".to_owned(),
        Some(text) => format!("default {text}"),
    };
    let kind = match s.kind {
        Kind::Number { min, max } => format!("{min} to {max}"),
        Kind::Flag => "true or false".into(),
        Kind::Address => "host:port".into(),
        Kind::List => "comma list".into(),
        Kind::Text => return default,
        Kind::Choice(words) => words.join(" or "),
    };
    format!("{kind}; {default}")
}

fn wrap(text: &str, indent: usize, width: usize) -> String {
    let pad = " ".repeat(indent);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && indent + line.len() + 1 + word.len() > width {
            lines.push(format!("{pad}{line}"));
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(format!("{pad}{line}"));
    }
    lines.join("\n")
}

/// The settings table (docs/settings.md) for all of `specs` (every binary of the
/// project): a row per setting, in the order the binaries declare them,
/// with the binaries that read it.
pub fn markdown_table(specs: &[&Spec]) -> String {
    /// The binaries that read a setting, each with its default there.
    type Readers<'a> = Vec<(&'a str, Option<&'a str>)>;
    let mut rows: Vec<(Setting, Readers)> = Vec::new();
    for spec in specs {
        for s in spec.settings() {
            match rows.iter_mut().find(|(known, _)| known.key == s.key) {
                Some((_, readers)) => readers.push((spec.binary, s.default)),
                None => rows.push((s, vec![(spec.binary, s.default)])),
            }
        }
    }
    let mut out = String::from("| setting | default | used by | meaning |\n|---|---|---|---|\n");
    for (s, readers) in rows {
        let first = readers[0].1;
        let default = if readers.iter().all(|(_, d)| *d == first) {
            show_default(first)
        } else {
            readers
                .iter()
                .map(|(binary, d)| format!("{} ({binary})", show_default(*d)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let used_by = if readers.len() == specs.len() && specs.len() > 1 {
            "all".to_owned()
        } else if readers.len() == 2 && readers.iter().all(|(binary, _)| binary.ends_with("-edge"))
        {
            "both edges".to_owned()
        } else {
            readers
                .iter()
                .map(|(binary, _)| *binary)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "| `{}` | {default} | {used_by} | {} |",
            s.env_name(),
            s.help.replace('|', "\\|")
        );
    }
    out
}

fn show_default(default: Option<&str>) -> String {
    match default {
        None => "unset".into(),
        Some("") => "empty".into(),
        Some(text) => format!("`{text}`"),
    }
}

/// The part of `readme` between the settings table's markers, if both are
/// there.
pub fn readme_table(readme: &str) -> Option<&str> {
    let start = readme.find(TABLE_START)? + TABLE_START.len();
    let end = start + readme[start..].find(TABLE_END)?;
    Some(readme[start..end].trim_start_matches('\n'))
}

/// Checks the settings table in docs/settings.md against `specs`: `Err` says which
/// rows are missing, extra or different, and gives the table to paste.
pub fn check_readme(readme: &str, specs: &[&Spec]) -> Result<(), String> {
    let expected = markdown_table(specs);
    let Some(found) = readme_table(readme) else {
        return Err(format!(
            "docs/settings.md has no settings table between {TABLE_START:?} and {TABLE_END:?}"
        ));
    };
    if found == expected {
        return Ok(());
    }
    let found_rows: Vec<&str> = found.lines().collect();
    let expected_rows: Vec<&str> = expected.lines().collect();
    let mut problems = Vec::new();
    for row in &expected_rows {
        if !found_rows.contains(row) {
            problems.push(format!("missing or different: {}", row_name(row)));
        }
    }
    for row in &found_rows {
        if !expected_rows.contains(row) {
            problems.push(format!("not in the spec or different: {}", row_name(row)));
        }
    }
    if problems.is_empty() {
        problems.push("rows in another order".into());
    }
    Err(format!(
        "the settings table in docs/settings.md differs from the spec ({}); the table from the spec:\n{expected}",
        problems.join("; ")
    ))
}

fn row_name(row: &str) -> &str {
    row.split('|').nth(1).map_or(row, str::trim)
}

/// The markers around the generated table in docs/settings.md.
pub const TABLE_START: &str =
    "<!-- settings table: generated from the settings spec; do not edit by hand -->";
pub const TABLE_END: &str = "<!-- end of settings table -->";

/// Levenshtein distance, for "did you mean".
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            current.push(
                (previous[j] + cost)
                    .min(previous[j + 1] + 1)
                    .min(current[j] + 1),
            );
        }
        previous = current;
    }
    previous[b.len()]
}

/// The known key closest to `key`.
pub(crate) fn closest<'a>(key: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    known.min_by_key(|candidate| distance(key, candidate))
}
