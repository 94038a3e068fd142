//! Settings: built-in defaults, then an optional TOML file (`--config FILE`
//! or `AUCTION_CONFIG=FILE`), then `AUCTION_*` environment variables.
//!
//! Every setting is declared once ([`Setting`], listed per binary in a
//! [`Spec`]); reading takes the declaration, so a setting cannot be read
//! without being declared. The `config` crate does the layering; parsing
//! is ours, so every bad value gets one line that names the setting in its
//! environment form and says what is wrong, e.g. `AUCTION_LISTEN: ":99999"
//! is not a host:port address`. An `AUCTION_*` variable or a file key that
//! is no setting of any binary stops start-up the same way, naming the
//! closest setting.

mod spec;

pub use spec::{
    ENV_PREFIX, Kind, NOT_SETTINGS, Setting, Spec, TABLE_END, TABLE_START, check_readme, env_name,
    markdown_table, readme_table,
};

use std::collections::BTreeSet;
use std::fmt;
use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;

/// The version `--version` prints: the workspace's, and the git commit
/// when the build was given one (`GIT_COMMIT` at build time).
pub fn version() -> String {
    let version = env!("CARGO_PKG_VERSION");
    match option_env!("GIT_COMMIT").filter(|commit| !commit.is_empty()) {
        Some(commit) => format!("{version} (commit {commit})"),
        None => version.to_owned(),
    }
}

/// A setting that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    /// Environment form of the setting, e.g. `AUCTION_LISTEN`.
    pub setting: String,
    pub problem: String,
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid setting {}: {}", self.setting, self.problem)
    }
}

impl std::error::Error for SettingError {}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Run,
    Help,
    Version,
    PrintConfig,
}

/// The parsed command line: an action and the optional settings file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub action: Action,
    pub config: Option<PathBuf>,
}

impl Invocation {
    /// Parses `[--config FILE] [--print-config] | --help | --version`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Invocation, SettingError> {
        let mut args = args.into_iter();
        let mut action = Action::Run;
        let mut config = None;
        let bad = |problem: String| SettingError {
            setting: "arguments".into(),
            problem,
        };
        while let Some(arg) = args.next() {
            let next = match arg.as_str() {
                "-h" | "--help" => Action::Help,
                "-V" | "--version" => Action::Version,
                "--print-config" => Action::PrintConfig,
                "--config" => {
                    let file = args
                        .next()
                        .ok_or_else(|| bad("--config expects a file name".into()))?;
                    config = Some(PathBuf::from(file));
                    continue;
                }
                other => match other.strip_prefix("--config=") {
                    Some(file) => {
                        config = Some(PathBuf::from(file));
                        continue;
                    }
                    None => {
                        return Err(bad(format!(
                            "unknown argument {other:?} (--help lists the arguments and settings)"
                        )));
                    }
                },
            };
            // --help and --version win over the rest.
            action = match (&action, next) {
                (Action::Help, _) | (_, Action::Help) => Action::Help,
                (Action::Version, _) | (_, Action::Version) => Action::Version,
                (_, next) => next,
            };
        }
        Ok(Invocation { action, config })
    }

    /// The settings file: `--config FILE`, else `AUCTION_CONFIG`.
    pub fn config_file(&self) -> Option<PathBuf> {
        self.config
            .clone()
            .or_else(|| std::env::var_os("AUCTION_CONFIG").map(PathBuf::from))
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Default,
    File,
    Environment,
}

/// The merged layers of one binary, read one declared setting at a time.
pub struct Settings {
    spec: &'static Spec,
    merged: config::Config,
    file: Option<PathBuf>,
    file_keys: BTreeSet<String>,
    env_keys: BTreeSet<String>,
}

impl Settings {
    /// Loads the layers of `spec`'s binary from the process's arguments
    /// (already parsed into `invocation`) and environment. `project` is
    /// every binary's spec: a setting of another binary is known (one
    /// environment or file may serve several), never an error.
    pub fn from_process(
        spec: &'static Spec,
        project: &[&Spec],
        invocation: &Invocation,
    ) -> Result<Settings, SettingError> {
        let mut env = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with(ENV_PREFIX) {
                continue;
            }
            let value = value.into_string().map_err(|_| SettingError {
                setting: name.to_owned(),
                problem: "is not UTF-8".into(),
            })?;
            env.push((name.to_owned(), value));
        }
        Settings::load(spec, project, invocation.config_file(), env)
    }

    /// Loads the optional TOML `file`, then the `AUCTION_*` variables of
    /// `env`; refuses a variable or file key that is no setting of
    /// `spec` or `project`, and a value `spec` does not take.
    pub fn load(
        spec: &'static Spec,
        project: &[&Spec],
        file: Option<PathBuf>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, SettingError> {
        let known: BTreeSet<&str> = std::iter::once(spec)
            .chain(project.iter().copied())
            .flat_map(|spec| spec.groups.iter().flat_map(|g| g.iter().map(|s| s.key)))
            .collect();
        let mut builder = config::Config::builder();
        let mut file_keys = BTreeSet::new();
        if let Some(path) = &file {
            if !path.is_file() {
                return Err(SettingError {
                    setting: "AUCTION_CONFIG".into(),
                    problem: format!("{} is not a readable file", path.display()),
                });
            }
            let source = config::File::from(path.clone()).format(config::FileFormat::Toml);
            let table = config::Source::collect(&source).map_err(|error| SettingError {
                setting: format!("AUCTION_CONFIG ({})", path.display()),
                problem: error.to_string(),
            })?;
            file_keys = table.into_keys().collect();
            let unknown: Vec<&String> = file_keys
                .iter()
                .filter(|key| !known.contains(key.as_str()))
                .collect();
            if !unknown.is_empty() {
                let suggestions = unknown
                    .iter()
                    .filter_map(|key| spec::closest(key, known.iter().copied()))
                    .collect::<Vec<_>>();
                return Err(SettingError {
                    setting: format!(
                        "{} in {}",
                        join(unknown.iter().map(|k| k.as_str())),
                        path.display()
                    ),
                    problem: unknown_problem(&suggestions),
                });
            }
            builder = builder.add_source(source);
        }
        let not_settings: BTreeSet<&str> = NOT_SETTINGS.iter().map(|(name, _)| *name).collect();
        let prefix = format!("{ENV_PREFIX}_");
        let variables: config::Map<String, String> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(&prefix) && !not_settings.contains(name.as_str()))
            .collect();
        let unknown: Vec<&String> = variables
            .keys()
            .filter(|name| !known.contains(env_key(name).as_str()))
            .collect();
        if !unknown.is_empty() {
            let known_names: Vec<String> = known.iter().map(|key| env_name(key)).collect();
            let suggestions = unknown
                .iter()
                .filter_map(|name| spec::closest(name, known_names.iter().map(String::as_str)))
                .collect::<Vec<_>>();
            return Err(SettingError {
                setting: join(unknown.iter().map(|k| k.as_str())),
                problem: unknown_problem(&suggestions),
            });
        }
        let env_keys = variables.keys().map(|name| env_key(name)).collect();
        builder = builder
            .add_source(config::Environment::with_prefix(ENV_PREFIX).source(Some(variables)));
        let merged = builder.build().map_err(|error| SettingError {
            setting: file
                .as_ref()
                .map(|path| format!("AUCTION_CONFIG ({})", path.display()))
                .unwrap_or_else(|| "AUCTION_*".into()),
            problem: error.to_string(),
        })?;
        let settings = Settings {
            spec,
            merged,
            file,
            file_keys,
            env_keys,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// The binary these settings are for.
    pub fn spec(&self) -> &'static Spec {
        self.spec
    }

    /// Checks every setting of the spec against its kind.
    fn validate(&self) -> Result<(), SettingError> {
        for s in self.spec.settings() {
            match s.kind {
                Kind::Number { .. } => self.number(&s).map(drop)?,
                Kind::Flag => self.flag(&s).map(drop)?,
                Kind::Address => self.listen_addr(&s).map(drop)?,
                Kind::Choice(_) => self.choice(&s).map(drop)?,
                Kind::List | Kind::Text => {}
            }
        }
        Ok(())
    }

    /// The declaration of `setting` as this binary reads it (with the
    /// binary's default); reading one the binary does not declare is a
    /// bug, reported as a bad setting so that any test catches it.
    fn declared(&self, setting: &Setting) -> Result<Setting, SettingError> {
        self.spec.find(setting.key).ok_or_else(|| SettingError {
            setting: setting.env_name(),
            problem: format!(
                "is read by {} but missing from its settings spec",
                self.spec.binary
            ),
        })
    }

    fn given(&self, key: &str) -> Option<String> {
        self.merged.get_string(key).ok()
    }

    /// Where the value of `setting` comes from.
    pub fn source(&self, setting: &Setting) -> Source {
        if self.env_keys.contains(setting.key) {
            Source::Environment
        } else if self.file_keys.contains(setting.key) {
            Source::File
        } else {
            Source::Default
        }
    }

    /// The text of `setting`: given, else its default; `None` when it is
    /// unset.
    pub fn text(&self, setting: &Setting) -> Result<Option<String>, SettingError> {
        let declared = self.declared(setting)?;
        Ok(self
            .given(declared.key)
            .or_else(|| declared.default.map(str::to_owned)))
    }

    fn required_text(&self, setting: &Setting) -> Result<(Setting, String), SettingError> {
        let declared = self.declared(setting)?;
        let text = self
            .given(declared.key)
            .or_else(|| declared.default.map(str::to_owned))
            .ok_or_else(|| self.error(setting, "is required"))?;
        Ok((declared, text))
    }

    /// A value parsed with `FromStr`.
    pub fn get<T>(&self, setting: &Setting) -> Result<T, SettingError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        let (_, text) = self.required_text(setting)?;
        text.trim().parse().map_err(|error| SettingError {
            setting: setting.env_name(),
            problem: format!("{text:?} is not valid ({error})"),
        })
    }

    /// One of the words of a [`Kind::Choice`], parsed with `FromStr`.
    pub fn choice(&self, setting: &Setting) -> Result<String, SettingError> {
        let (declared, text) = self.required_text(setting)?;
        let word = text.trim().to_ascii_lowercase();
        match declared.kind {
            Kind::Choice(words) if !words.contains(&word.as_str()) => Err(self.error(
                setting,
                format!("{text:?} is not one of {}", words.join(", ")),
            )),
            _ => Ok(word),
        }
    }

    /// A whole number within the declared range.
    pub fn number(&self, setting: &Setting) -> Result<u64, SettingError> {
        let (declared, _) = self.required_text(setting)?;
        let value: u64 = self.get(setting)?;
        let Kind::Number { min, max } = declared.kind else {
            return Ok(value);
        };
        if (min..=max).contains(&value) {
            Ok(value)
        } else {
            Err(self.error(setting, format!("{value} is out of range {min}..={max}")))
        }
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
    pub fn flag(&self, setting: &Setting) -> Result<bool, SettingError> {
        let (_, text) = self.required_text(setting)?;
        match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(self.error(setting, format!("{text:?} is not true or false"))),
        }
    }

    /// A `host:port` listen address. Port 0 asks the OS for a free port.
    pub fn listen_addr(&self, setting: &Setting) -> Result<SocketAddr, SettingError> {
        let (_, text) = self.required_text(setting)?;
        let problem = || {
            self.error(
                setting,
                format!("{text:?} is not a host:port address with a port from 0 to 65535"),
            )
        };
        if let Ok(addr) = text.parse() {
            return Ok(addr);
        }
        let (host, port) = text.rsplit_once(':').ok_or_else(problem)?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(problem());
        }
        text.to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(problem)
    }

    /// A comma-separated list; blank items are dropped.
    pub fn list(&self, setting: &Setting) -> Result<Vec<String>, SettingError> {
        Ok(self
            .text(setting)?
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// Turns a validation failure of `setting` into a [`SettingError`].
    pub fn error(&self, setting: &Setting, problem: impl Into<String>) -> SettingError {
        SettingError {
            setting: setting.env_name(),
            problem: problem.into(),
        }
    }

    /// `--print-config`: every setting of the binary with its effective
    /// value and where it came from; secrets and credentials redacted.
    pub fn print_config(&self) -> String {
        let mut out = format!("# {} {}: effective settings\n", self.spec.binary, version());
        if let Some(file) = &self.file {
            let _ = writeln!(out, "# file: {}", file.display());
        }
        for s in self.spec.settings() {
            let value = self.given(s.key).or_else(|| s.default.map(str::to_owned));
            let shown = match (&value, s.secret) {
                (None, _) => "(unset)".to_owned(),
                (Some(_), true) => "(set, redacted)".to_owned(),
                (Some(text), false) => format!("{:?}", redact(text)),
            };
            let source = match self.source(&s) {
                Source::Default => "default",
                Source::File => "file",
                Source::Environment => "environment",
            };
            let _ = writeln!(out, "{}={shown}  # {source}", s.env_name());
        }
        out
    }
}

/// `AUCTION_REDIS_URL` → `redis_url`.
fn env_key(name: &str) -> String {
    name[ENV_PREFIX.len() + 1..].to_ascii_lowercase()
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

fn unknown_problem(suggestions: &[&str]) -> String {
    match suggestions {
        [one] => format!("no such setting; did you mean {one}?"),
        several => format!(
            "no such settings; did you mean {} (in that order)?",
            several.join(", ")
        ),
    }
}

/// Hides the credentials a URL-like value carries: the password of
/// `scheme://user:password@host`, a bare `scheme://secret@host`, and the
/// values of query parameters that look like credentials.
pub fn redact(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let authority_end = tail.find(['/', '?', '#', ',']).unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => {
                        let _ = write!(out, "{user}:<redacted>");
                    }
                    None => out.push_str("<redacted>"),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    redact_query(&out)
}

fn redact_query(text: &str) -> String {
    let Some((base, query)) = text.split_once('?') else {
        return text.to_owned();
    };
    let sensitive = ["token", "password", "secret", "key", "sig", "auth"];
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((name, _))
                if sensitive
                    .iter()
                    .any(|word| name.to_ascii_lowercase().contains(word)) =>
            {
                format!("{name}=<redacted>")
            }
            _ => param.to_owned(),
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTEN: Setting = Setting {
        key: "listen",
        kind: Kind::Address,
        default: None,
        help: "the public port",
        secret: false,
    };
    const SIM_INTERVAL_MS: Setting = Setting {
        key: "sim_interval_ms",
        kind: Kind::Number {
            min: 1,
            max: 60_000,
        },
        default: Some("2000"),
        help: "one bid per interval",
        secret: false,
    };
    const REDIS_URL: Setting = Setting {
        key: "redis_url",
        kind: Kind::Text,
        default: Some("redis://127.0.0.1:6379"),
        help: "Redis",
        secret: false,
    };
    const SECRET: Setting = Setting {
        key: "session_secret",
        kind: Kind::Text,
        default: None,
        help: "signing secret",
        secret: true,
    };
    const LOG_FORMAT: Setting = Setting {
        key: "log_format",
        kind: Kind::Choice(&["pretty", "json"]),
        default: Some("pretty"),
        help: "log lines",
        secret: false,
    };
    const OTHER: Setting = Setting {
        key: "ws_ping_ms",
        kind: Kind::Number { min: 1, max: 10 },
        default: Some("5"),
        help: "another binary's",
        secret: false,
    };
    static SPEC: Spec = Spec {
        binary: "bidder",
        about: "test",
        usage: &[],
        groups: &[&[LISTEN, REDIS_URL, SECRET, LOG_FORMAT], &[SIM_INTERVAL_MS]],
        defaults: &[("listen", "0.0.0.0:8080")],
    };
    static EDGE: Spec = Spec {
        binary: "ws-edge",
        about: "test",
        usage: &[],
        groups: &[&[LISTEN, OTHER]],
        defaults: &[("listen", "0.0.0.0:8082")],
    };

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, SettingError> {
        Settings::load(
            &SPEC,
            &[&SPEC, &EDGE],
            None,
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    fn env(pairs: &[(&str, &str)]) -> Settings {
        load(pairs).unwrap()
    }

    #[test]
    fn environment_overrides_file_which_overrides_defaults() {
        let dir = tempdir();
        let file = dir.join("a.toml");
        std::fs::write(
            &file,
            "sim_interval_ms = 500\nlisten = \"127.0.0.1:9000\"\n",
        )
        .unwrap();
        let settings = Settings::load(
            &SPEC,
            &[],
            Some(file),
            [("AUCTION_LISTEN".to_string(), "127.0.0.1:9001".to_string())],
        )
        .unwrap();
        assert_eq!(settings.number(&SIM_INTERVAL_MS).unwrap(), 500);
        assert_eq!(settings.source(&SIM_INTERVAL_MS), Source::File);
        assert_eq!(settings.listen_addr(&LISTEN).unwrap().port(), 9001);
        assert_eq!(settings.source(&LISTEN), Source::Environment);
        assert_eq!(settings.source(&REDIS_URL), Source::Default);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "settings-test-{}-{}",
            std::process::id(),
            fastrand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn fastrand_suffix() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }

    #[test]
    fn the_binary_default_wins_over_the_shared_one() {
        let settings = env(&[]);
        assert_eq!(settings.listen_addr(&LISTEN).unwrap().port(), 8080);
        assert_eq!(settings.number(&SIM_INTERVAL_MS).unwrap(), 2000);
        assert_eq!(settings.text(&SECRET).unwrap(), None);
    }

    #[test]
    fn errors_name_the_setting() {
        let error = load(&[("AUCTION_LISTEN", ":99999")]).err().unwrap();
        assert_eq!(error.setting, "AUCTION_LISTEN");
        let error = load(&[("AUCTION_SIM_INTERVAL_MS", "fast")]).err().unwrap();
        assert_eq!(error.setting, "AUCTION_SIM_INTERVAL_MS");
        assert!(error.to_string().contains("\"fast\""));
        let error = load(&[("AUCTION_SIM_INTERVAL_MS", "0")]).err().unwrap();
        assert!(
            error.to_string().contains("out of range 1..=60000"),
            "{error}"
        );
        let error = load(&[("AUCTION_LOG_FORMAT", "xml")]).err().unwrap();
        assert_eq!(error.setting, "AUCTION_LOG_FORMAT");
    }

    #[test]
    fn listen_accepts_port_zero_and_rejects_garbage() {
        let settings = env(&[("AUCTION_LISTEN", "127.0.0.1:0")]);
        assert_eq!(settings.listen_addr(&LISTEN).unwrap().port(), 0);
        for bad in ["nonsense", ":80", "1.2.3.4:", "1.2.3.4:70000"] {
            assert!(load(&[("AUCTION_LISTEN", bad)]).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_unknown_variable_is_refused_naming_the_closest_setting() {
        let error = load(&[("AUCTION_REDIS_ULR", "redis://x")]).err().unwrap();
        assert_eq!(error.setting, "AUCTION_REDIS_ULR");
        assert!(error.problem.contains("AUCTION_REDIS_URL"), "{error}");
        // Another binary's setting, and the variables that are no settings,
        // are known.
        env(&[
            ("AUCTION_WS_PING_MS", "5"),
            ("AUCTION_CONFIG", ""),
            ("AUCTION_TOKEN", "t"),
            ("AUCTION_ID", "1"),
            ("OTHER_VARIABLE", "x"),
        ]);
    }

    #[test]
    fn an_unknown_file_key_is_refused_naming_the_closest_setting() {
        let dir = tempdir();
        let file = dir.join("a.toml");
        std::fs::write(&file, "sim_intervl_ms = 500\n").unwrap();
        let error = Settings::load(&SPEC, &[], Some(file), []).err().unwrap();
        assert!(error.setting.contains("sim_intervl_ms"), "{error}");
        assert!(error.problem.contains("sim_interval_ms"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reading_an_undeclared_setting_is_an_error() {
        let settings = env(&[]);
        let error = settings.number(&OTHER).unwrap_err();
        assert!(error.problem.contains("missing from its settings spec"));
    }

    #[test]
    fn arguments() {
        let args = |a: &[&str]| Invocation::parse(a.iter().map(|s| s.to_string()));
        assert_eq!(
            args(&["--config", "x.toml"]).unwrap(),
            Invocation {
                action: Action::Run,
                config: Some(PathBuf::from("x.toml"))
            }
        );
        assert_eq!(args(&[]).unwrap().action, Action::Run);
        assert_eq!(args(&["--help"]).unwrap().action, Action::Help);
        assert_eq!(args(&["--version"]).unwrap().action, Action::Version);
        let print = args(&["--config=x.toml", "--print-config"]).unwrap();
        assert_eq!(print.action, Action::PrintConfig);
        assert_eq!(print.config, Some(PathBuf::from("x.toml")));
        assert!(args(&["--config"]).is_err());
        assert!(args(&["--bogus"]).is_err());
    }

    #[test]
    fn print_config_redacts_secrets_and_credentials() {
        let settings = env(&[
            ("AUCTION_SESSION_SECRET", "a very secret secret"),
            ("AUCTION_REDIS_URL", "redis://user:hunter2@redis:6379/0"),
        ]);
        let printed = settings.print_config();
        assert!(!printed.contains("very secret"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("AUCTION_SESSION_SECRET=(set, redacted)"));
        assert!(printed.contains("redis://user:<redacted>@redis:6379/0"));
        assert!(printed.contains("AUCTION_LISTEN=\"0.0.0.0:8080\"  # default"));
    }

    #[test]
    fn redact_hides_every_credential_form() {
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redact("rediss://:pw@h:1#insecure"),
            "rediss://:<redacted>@h:1#insecure"
        );
        assert_eq!(
            redact("redis+cluster://u:pw@a:1,b:2"),
            "redis+cluster://u:<redacted>@a:1,b:2"
        );
        assert_eq!(redact("https://tok@h/x"), "https://<redacted>@h/x");
        assert_eq!(
            redact("https://h/jwks?api_key=abc&x=1"),
            "https://h/jwks?api_key=<redacted>&x=1"
        );
    }

    #[test]
    fn help_lists_every_setting_with_its_default() {
        let help = SPEC.help();
        for s in SPEC.settings() {
            assert!(help.contains(&s.env_name()), "{help}");
        }
        assert!(help.contains("default 0.0.0.0:8080"), "{help}");
    }

    #[test]
    fn the_table_says_who_reads_each_setting() {
        let table = markdown_table(&[&SPEC, &EDGE]);
        assert!(table.contains(
            "| `AUCTION_LISTEN` | `0.0.0.0:8080` (bidder), `0.0.0.0:8082` (ws-edge) | all |"
        ));
        assert!(
            table.contains("| `AUCTION_WS_PING_MS` | `5` | ws-edge |"),
            "{table}"
        );
        assert!(table.contains("| `AUCTION_SESSION_SECRET` | unset | bidder |"));
    }

    #[test]
    fn closest_is_by_edit_distance() {
        assert_eq!(spec::distance("kitten", "sitting"), 3);
        assert_eq!(
            spec::closest("redis_ulr", ["listen", "redis_url"].into_iter()),
            Some("redis_url")
        );
    }
}
