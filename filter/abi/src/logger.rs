//! `log` records and panics to Envoy's log.

use crate::hostcalls;
use crate::wire::{self, LogLevel};

struct HostLogger;

static LOGGER: HostLogger = HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = wire::host_level(record.level());
        // A message the host cannot take is lost: there is nowhere else to
        // report it.
        let _ = match record.args().as_str() {
            Some(text) => hostcalls::log(level, text),
            None => hostcalls::log(level, &record.args().to_string()),
        };
    }

    fn flush(&self) {}
}

/// Installs the logger (at `info` until the host tells its level) and a
/// panic hook that logs the panic. The hook does not stop the panic: the
/// module aborts after it, which Envoy sees as a VM failure and handles
/// with the plugin's `failure_policy`.
pub(crate) fn install() {
    // Fails only if a logger is already installed, which then stays.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(LogLevel::Critical, &info.to_string());
    }));
}

/// Follows the log level Envoy has for the module.
pub(crate) fn follow_host_level() {
    match hostcalls::log_level() {
        Ok(level) => log::set_max_level(wire::level_filter(level)),
        Err(e) => log::warn!("cannot read the host's log level: {e}"),
    }
}
