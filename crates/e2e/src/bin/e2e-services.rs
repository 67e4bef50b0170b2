//! The services a cross-service test runs as processes, in one executable: `E2E_SERVICE` names
//! which one this process is (its `SPEC.name`). Everything else is that service's own `main`:
//! arguments, layered configuration, telemetry (its own `service.name`), signals, exit codes.
//! One executable rather than the three services' own keeps the build to one link, and cargo
//! builds it fresh for this crate's tests, which another package's binaries would not be.

use std::process::ExitCode;

/// Selects the service.
const SERVICE_ENV: &str = "E2E_SERVICE";

#[allow(clippy::print_stderr)]
fn main() -> ExitCode {
    let service = std::env::var(SERVICE_ENV).unwrap_or_default();
    if service == gateway_ws::SPEC.name {
        service_runtime::main_with(gateway_ws::SPEC, gateway_ws::prepare, gateway_ws::run)
    } else if service == gateway_socketio::SPEC.name {
        service_runtime::main_with(
            gateway_socketio::SPEC,
            gateway_socketio::prepare,
            gateway_socketio::run,
        )
    } else if service == webhook_dispatcher::SPEC.name {
        service_runtime::main_with(
            webhook_dispatcher::SPEC,
            webhook_dispatcher::prepare,
            webhook_dispatcher::run,
        )
    } else {
        eprintln!(
            "{SERVICE_ENV} must name one of {}, {}, {} (got {service:?})",
            gateway_ws::SPEC.name,
            gateway_socketio::SPEC.name,
            webhook_dispatcher::SPEC.name
        );
        ExitCode::from(service_runtime::config::EXIT_INVALID_CONFIG)
    }
}
