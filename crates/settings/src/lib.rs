//! Settings: built-in defaults, then an optional TOML file (`--config FILE`
//! or `AUCTION_CONFIG=FILE`), then `AUCTION_*` environment variables.
//!
//! The `config` crate does the layering; parsing is ours, so every bad value
//! gets one line that names the setting in its environment form and says
//! what is wrong, e.g. `AUCTION_LISTEN: ":99999" is not a host:port address`.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;

const ENV_PREFIX: &str = "AUCTION";

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

/// The merged layers, read one setting at a time.
pub struct Settings {
    merged: config::Config,
}

impl Settings {
    /// Loads the layers from the process's arguments and environment.
    pub fn from_process() -> Result<Settings, SettingError> {
        let file = config_file_from_args(std::env::args().skip(1))?
            .or_else(|| std::env::var_os("AUCTION_CONFIG").map(PathBuf::from));
        Settings::load(file, std::env::vars())
    }

    /// Loads the optional TOML `file`, then the `AUCTION_*` variables of `env`.
    pub fn load(
        file: Option<PathBuf>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, SettingError> {
        let mut builder = config::Config::builder();
        if let Some(path) = &file {
            if !path.is_file() {
                return Err(SettingError {
                    setting: "AUCTION_CONFIG".into(),
                    problem: format!("{} is not a readable file", path.display()),
                });
            }
            builder = builder
                .add_source(config::File::from(path.clone()).format(config::FileFormat::Toml));
        }
        // Only AUCTION_* variables, minus AUCTION_CONFIG (it names the file).
        let variables: config::Map<String, String> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with("AUCTION_") && name != "AUCTION_CONFIG")
            .collect();
        builder = builder
            .add_source(config::Environment::with_prefix(ENV_PREFIX).source(Some(variables)));
        let merged = builder.build().map_err(|error| SettingError {
            setting: file
                .map(|path| format!("AUCTION_CONFIG ({})", path.display()))
                .unwrap_or_else(|| "AUCTION_*".into()),
            problem: error.to_string(),
        })?;
        Ok(Settings { merged })
    }

    /// The raw text of `key` (lower snake case, e.g. `redis_url`), if set.
    pub fn raw(&self, key: &str) -> Option<String> {
        self.merged.get_string(key).ok()
    }

    /// A value parsed with `FromStr`, or `default` when unset.
    pub fn get<T>(&self, key: &str, default: T) -> Result<T, SettingError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.raw(key) {
            None => Ok(default),
            Some(text) => text.trim().parse().map_err(|error| SettingError {
                setting: env_name(key),
                problem: format!("{text:?} is not valid ({error})"),
            }),
        }
    }

    /// A whole number within `range`.
    pub fn number(
        &self,
        key: &str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<u64, SettingError> {
        let value = self.get(key, default)?;
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(SettingError {
                setting: env_name(key),
                problem: format!(
                    "{value} is out of range {}..={}",
                    range.start(),
                    range.end()
                ),
            })
        }
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
    pub fn flag(&self, key: &str, default: bool) -> Result<bool, SettingError> {
        match self.raw(key) {
            None => Ok(default),
            Some(text) => match text.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(SettingError {
                    setting: env_name(key),
                    problem: format!("{text:?} is not true or false"),
                }),
            },
        }
    }

    /// A `host:port` listen address. Port 0 asks the OS for a free port.
    pub fn listen_addr(&self, key: &str, default: &str) -> Result<SocketAddr, SettingError> {
        let text = self.raw(key).unwrap_or_else(|| default.to_owned());
        let problem = || SettingError {
            setting: env_name(key),
            problem: format!("{text:?} is not a host:port address with a port from 0 to 65535"),
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
    pub fn list(&self, key: &str, default: &str) -> Vec<String> {
        self.raw(key)
            .unwrap_or_else(|| default.to_owned())
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Turns a validation failure of `key` into a [`SettingError`].
    pub fn error(&self, key: &str, problem: impl Into<String>) -> SettingError {
        SettingError {
            setting: env_name(key),
            problem: problem.into(),
        }
    }
}

/// The environment form of a key: `redis_url` → `AUCTION_REDIS_URL`.
pub fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}_{}", key.to_ascii_uppercase())
}

fn config_file_from_args(
    mut args: impl Iterator<Item = String>,
) -> Result<Option<PathBuf>, SettingError> {
    let missing = || SettingError {
        setting: "--config".into(),
        problem: "expects a file name".into(),
    };
    let Some(arg) = args.next() else {
        return Ok(None);
    };
    let file = if arg == "--config" {
        args.next().map(PathBuf::from).ok_or_else(missing)?
    } else if let Some(path) = arg.strip_prefix("--config=") {
        PathBuf::from(path)
    } else {
        return Err(SettingError {
            setting: "arguments".into(),
            problem: format!("unknown argument {arg:?} (only --config FILE is accepted)"),
        });
    };
    match args.next() {
        None => Ok(Some(file)),
        Some(extra) => Err(SettingError {
            setting: "arguments".into(),
            problem: format!("unexpected argument {extra:?} after --config FILE"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Settings {
        Settings::load(
            None,
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap()
    }

    #[test]
    fn environment_overrides_file_which_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("settings-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.toml");
        std::fs::write(
            &file,
            "sim_interval_ms = 500\nlisten = \"127.0.0.1:9000\"\n",
        )
        .unwrap();
        let settings = Settings::load(
            Some(file),
            [("AUCTION_LISTEN".to_string(), "127.0.0.1:9001".to_string())],
        )
        .unwrap();
        assert_eq!(
            settings
                .number("sim_interval_ms", 2000, 1..=60_000)
                .unwrap(),
            500
        );
        assert_eq!(
            settings.listen_addr("listen", "0.0.0.0:1").unwrap().port(),
            9001
        );
        assert_eq!(settings.number("other_ms", 7, 0..=10).unwrap(), 7);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn errors_name_the_setting() {
        let settings = env(&[
            ("AUCTION_LISTEN", ":99999"),
            ("AUCTION_SIM_INTERVAL_MS", "fast"),
        ]);
        let listen = settings.listen_addr("listen", "0.0.0.0:8080").unwrap_err();
        assert_eq!(listen.setting, "AUCTION_LISTEN");
        let number = settings
            .number("sim_interval_ms", 2000, 1..=10)
            .unwrap_err();
        assert_eq!(number.setting, "AUCTION_SIM_INTERVAL_MS");
        assert!(number.to_string().contains("\"fast\""));
    }

    #[test]
    fn listen_accepts_port_zero_and_rejects_garbage() {
        let settings = env(&[("AUCTION_LISTEN", "127.0.0.1:0")]);
        assert_eq!(settings.listen_addr("listen", "x").unwrap().port(), 0);
        for bad in ["nonsense", ":80", "1.2.3.4:", "1.2.3.4:70000"] {
            let settings = env(&[("AUCTION_LISTEN", bad)]);
            assert!(settings.listen_addr("listen", "x").is_err(), "{bad}");
        }
    }

    #[test]
    fn args_take_only_config() {
        let args = |a: &[&str]| config_file_from_args(a.iter().map(|s| s.to_string()));
        assert_eq!(
            args(&["--config", "x.toml"]).unwrap(),
            Some(PathBuf::from("x.toml"))
        );
        assert_eq!(args(&[]).unwrap(), None);
        assert!(args(&["--config"]).is_err());
        assert!(args(&["--bogus"]).is_err());
    }
}
