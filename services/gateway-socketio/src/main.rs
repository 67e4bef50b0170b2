fn main() -> std::process::ExitCode {
    service_runtime::main_with(
        gateway_socketio::SPEC,
        gateway_socketio::prepare,
        gateway_socketio::run,
    )
}
