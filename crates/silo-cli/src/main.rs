//! The `silo` command: a redis-cli for silo stores (inspect and change state from a shell).
//! Each subcommand maps to one `FunctionStorage` operation; argument parsing lives in
//! `cli.rs`, this file runs the operations and prints their results.

mod cli;
mod replicate;
mod serve;

use std::io::{self, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use cli::{Cli, Command, CounterCmd, Encoding, KvCmd, LogCmd, QueueCmd, ValueArg};

/// Exit statuses (also listed in `silo --help`).
mod exit {
    /// The operation found nothing (missing key, empty queue, lost lease).
    pub const NOT_FOUND: u8 = 1;
    /// Bad command line or bad input bytes (clap also exits 2 on usage errors).
    pub const USAGE: u8 = 2;
    /// The store returned an error.
    pub const STORE: u8 = 3;
}

/// What a command ended with, short of success.
enum Failure {
    NotFound(String),
    Usage(String),
    Store(silo::Error),
    Serve(serve::ServeError),
}

impl From<silo::Error> for Failure {
    fn from(e: silo::Error) -> Self {
        Failure::Store(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::NotFound(what)) => {
            eprintln!("silo: {what}");
            ExitCode::from(exit::NOT_FOUND)
        }
        Err(Failure::Usage(msg)) => {
            eprintln!("silo: {msg}");
            ExitCode::from(exit::USAGE)
        }
        Err(Failure::Store(e @ silo::Error::Config { .. })) => {
            eprintln!("silo: {e}");
            ExitCode::from(exit::USAGE)
        }
        Err(Failure::Store(e)) => {
            eprintln!("silo: {e}");
            ExitCode::from(exit::STORE)
        }
        Err(Failure::Serve(serve::ServeError::Usage(e))) => {
            eprintln!("silo serve: {e}");
            ExitCode::from(exit::USAGE)
        }
        Err(Failure::Serve(serve::ServeError::Failed(e))) => {
            eprintln!("silo serve: {e}");
            ExitCode::from(exit::STORE)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    if let Command::Serve(args) = cli.command {
        return serve::run(args, cli.store.as_deref()).map_err(Failure::Serve);
    }
    match &cli.command {
        Command::Replicate(args) => {
            let url = match &cli.store {
                Some(url) => url.clone(),
                None => silo::EnvConfig::from_env()?.url,
            };
            return Ok(replicate::replicate(args, &url)?);
        }
        Command::Restore(args) => return Ok(replicate::restore(args)?),
        _ => {}
    }
    let enc = cli.encoding();
    let store = match &cli.store {
        Some(url) => silo::open(url)?,
        None => silo::from_env()?,
    };
    let name = |s: &str| enc.decode(s).map_err(Failure::Usage);
    let mut out = io::stdout().lock();
    match cli.command {
        Command::Stat => {
            let s = store.stat()?;
            let disk = s.bytes_on_disk.map_or("-".to_string(), |b| b.to_string());
            let text = format!(
                "backend: {}\nlocation: {}\nscopes: {}\nstate_entries: {}\nlog_entries: {}\n\
                 counters: {}\nqueue_items: {}\ndead_letters: {}\nbytes_on_disk: {disk}\n\
                 max_attempts: {}\nmax_value_bytes: {}\n{}",
                s.backend,
                s.location,
                s.scopes,
                s.state_entries,
                s.log_entries,
                s.counters,
                s.queue_items,
                s.dead_letters,
                s.max_attempts,
                s.max_value_bytes,
                s.durable_frame_no
                    .map(|n| format!("durable_frame_no: {n}\n"))
                    .unwrap_or_default()
            );
            emit(&mut out, text.as_bytes())
        }
        Command::Kv(KvCmd::Get { scope, key }) => {
            match store.kv_get(&name(&scope)?, &name(&key)?)? {
                Some(v) => print_value(&mut out, enc, &v),
                None => Err(Failure::NotFound(format!("no value at {scope}/{key}"))),
            }
        }
        Command::Kv(KvCmd::Put { scope, key, value }) => {
            let value = read_value(enc, &value)?;
            store.kv_put(&name(&scope)?, &name(&key)?, &value)?;
            Ok(())
        }
        Command::Kv(KvCmd::Del { scope, key }) => {
            store.kv_del(&name(&scope)?, &name(&key)?)?;
            Ok(())
        }
        Command::Log(LogCmd::Append {
            scope,
            ns,
            key,
            value,
        }) => {
            let value = read_value(enc, &value)?;
            let id = store.append(&name(&scope)?, &name(&ns)?, &name(&key)?, &value)?;
            emit(&mut out, format!("{id}\n").as_bytes())
        }
        Command::Log(LogCmd::Scan {
            scope,
            ns,
            key,
            after,
            limit,
        }) => {
            let entries = store.scan(&name(&scope)?, &name(&ns)?, &name(&key)?, after, limit)?;
            for (id, value) in entries {
                emit(&mut out, format!("{id}\t").as_bytes())?;
                print_value(&mut out, enc, &value)?;
            }
            Ok(())
        }
        Command::Queue(QueueCmd::Push { scope, values }) => {
            let items = values
                .iter()
                .map(|v| read_value(enc, v))
                .collect::<Result<Vec<_>, _>>()?;
            store.queue_push(&name(&scope)?, &items)?;
            Ok(())
        }
        Command::Queue(QueueCmd::Pop { scope }) => match store.queue_pop(&name(&scope)?)? {
            Some(v) => print_value(&mut out, enc, &v),
            None => Err(Failure::NotFound(format!("queue {scope} is empty"))),
        },
        Command::Queue(QueueCmd::Len { scope }) => {
            let n = store.queue_len(&name(&scope)?)?;
            emit(&mut out, format!("{n}\n").as_bytes())
        }
        Command::Queue(QueueCmd::Claim { scope, lease_secs }) => {
            let lease = Duration::try_from_secs_f64(lease_secs)
                .map_err(|e| Failure::Usage(format!("--lease {lease_secs}: {e}")))?;
            match store.queue_claim(&name(&scope)?, lease)? {
                Some(c) => {
                    emit(&mut out, format!("{}\t{}\t", c.id, c.attempt).as_bytes())?;
                    print_value(&mut out, enc, &c.value)
                }
                None => Err(Failure::NotFound(format!(
                    "queue {scope} has no visible item"
                ))),
            }
        }
        Command::Queue(QueueCmd::Ack { scope, claim_id }) => {
            if store.queue_ack(&name(&scope)?, claim_id)? {
                Ok(())
            } else {
                Err(Failure::NotFound(format!(
                    "claim {claim_id} is no longer held (expired, released or acked)"
                )))
            }
        }
        Command::Counter(CounterCmd::Get { scope, ns, key }) => {
            let n = store.counter_get(&name(&scope)?, &name(&ns)?, &name(&key)?)?;
            emit(&mut out, format!("{n}\n").as_bytes())
        }
        Command::Counter(CounterCmd::Add {
            scope,
            ns,
            key,
            delta,
        }) => {
            let n = store.counter_add(&name(&scope)?, &name(&ns)?, &name(&key)?, delta)?;
            emit(&mut out, format!("{n}\n").as_bytes())
        }
        Command::Clear { scope } => {
            let n = store.clear(&name(&scope)?)?;
            emit(&mut out, format!("{n}\n").as_bytes())
        }
        Command::Serve(_) | Command::Replicate(_) | Command::Restore(_) => {
            Err(Failure::Usage("handled above".into()))
        }
        Command::Gc { ttl_secs } => {
            let n = store.gc(Duration::from_secs(ttl_secs))?;
            emit(&mut out, format!("{n}\n").as_bytes())
        }
    }
}

fn emit(out: &mut impl Write, bytes: &[u8]) -> Result<(), Failure> {
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| Failure::Store(silo::Error::io("writing to stdout", e)))
}

/// Prints a value in the chosen encoding, followed by a newline (none for `--raw`).
fn print_value(out: &mut impl Write, enc: Encoding, value: &[u8]) -> Result<(), Failure> {
    match enc {
        Encoding::Raw => emit(out, value),
        Encoding::Hex => emit(out, format!("{}\n", hex::encode(value)).as_bytes()),
        Encoding::Text => match std::str::from_utf8(value) {
            Ok(text) => emit(out, format!("{text}\n").as_bytes()),
            // The value may already be gone from the store (a pop): show it in a form that
            // survives a terminal rather than lose it.
            Err(_) => {
                eprintln!(
                    "silo: the value ({} bytes) is not UTF-8 text; printed as hex \
                     (pass --hex or --raw to choose)",
                    value.len()
                );
                emit(out, format!("{}\n", hex::encode(value)).as_bytes())
            }
        },
    }
}

/// The bytes of a value argument: literal text (or hex with `--hex`), `-` for stdin, or
/// `@PATH` for a file's contents.
fn read_value(enc: Encoding, arg: &ValueArg) -> Result<Vec<u8>, Failure> {
    match arg {
        ValueArg::Stdin => {
            let mut buf = Vec::new();
            io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| Failure::Store(silo::Error::io("reading the value from stdin", e)))?;
            Ok(buf)
        }
        ValueArg::File(path) => std::fs::read(path).map_err(|e| {
            Failure::Store(silo::Error::io(
                format!("reading the value from {}", path.display()),
                e,
            ))
        }),
        ValueArg::Literal(s) => enc.decode(s).map_err(Failure::Usage),
    }
}
