//! `bidder token --name NAME [--role ROLE]... [--ttl-s N]`: mints a guest
//! token with the shared secret (`AUCTION_SESSION_SECRET`, from the
//! environment or the `AUCTION_CONFIG` file) and prints it on stdout. For
//! operators (a seller token to create auctions) and load tests.

use auction_domain::BidderName;
use identity::IdentityConfig;
use settings::{Action, Invocation, Settings};
use std::process::ExitCode;
use std::time::Duration;

pub const COMMAND: &str = "token";
const USAGE: &str = "usage: bidder token --name NAME [--role ROLE]... [--ttl-s SECONDS]";
/// Operators' tokens may last up to a year.
const MAX_TTL_S: u64 = 366 * 24 * 3600;

struct Request {
    name: BidderName,
    roles: Vec<String>,
    ttl_s: Option<u64>,
}

pub fn run(args: impl Iterator<Item = String>) -> ExitCode {
    let args: Vec<String> = args.collect();
    if args.iter().any(|arg| arg == "--help" || arg == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let request = match parse(args.into_iter()) {
        Ok(request) => request,
        Err(problem) => return usage_error(&problem),
    };
    // The settings file is AUCTION_CONFIG's.
    let invocation = Invocation {
        action: Action::Run,
        config: None,
    };
    let settings = match Settings::from_process(
        &service_kit::spec::BIDDER,
        service_kit::spec::ALL,
        &invocation,
    ) {
        Ok(settings) => settings,
        Err(error) => return usage_error(&error.to_string()),
    };
    let guest = match IdentityConfig::read(&settings) {
        Ok(IdentityConfig {
            guest: Some(guest), ..
        }) => guest,
        Ok(_) => {
            return usage_error(
                "invalid setting AUCTION_SESSION_SECRET: is required to mint guest tokens",
            );
        }
        Err(error) => return usage_error(&error.to_string()),
    };
    let ttl = request.ttl_s.map_or(guest.ttl(), Duration::from_secs);
    let roles: Vec<&str> = request.roles.iter().map(String::as_str).collect();
    match guest.mint_for(&request.name, &roles, ttl) {
        Ok(session) => {
            println!("{}", session.token);
            ExitCode::SUCCESS
        }
        Err(problem) => {
            eprintln!("{problem}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(problem: &str) -> ExitCode {
    eprintln!("{problem}\n{USAGE}");
    ExitCode::from(2)
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Request, String> {
    let mut name = None;
    let mut roles = Vec::new();
    let mut ttl_s = None;
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--name" => {
                let text = value("--name")?;
                name = Some(BidderName::parse(&text).map_err(|error| error.message)?);
            }
            "--role" => roles.push(value("--role")?),
            "--ttl-s" => {
                let text = value("--ttl-s")?;
                ttl_s = Some(
                    text.parse::<u64>()
                        .ok()
                        .filter(|s| (1..=MAX_TTL_S).contains(s))
                        .ok_or_else(|| format!("--ttl-s must be 1 to {MAX_TTL_S} seconds"))?,
                );
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Request {
        name: name.ok_or("--name is required")?,
        roles,
        ttl_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Request, String> {
        parse(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_name_roles_and_lifetime() {
        let request = args(&["--name", "Ops", "--role", "seller", "--ttl-s", "60"]).unwrap();
        assert_eq!(request.name.as_str(), "Ops");
        assert_eq!(request.roles, vec!["seller"]);
        assert_eq!(request.ttl_s, Some(60));
        assert!(args(&[]).is_err());
        assert!(args(&["--name"]).is_err());
        assert!(args(&["--name", "a", "--ttl-s", "0"]).is_err());
        assert!(args(&["--name", "a", "--bogus"]).is_err());
        assert!(args(&["--name", "\u{202E}"]).is_err());
    }
}
