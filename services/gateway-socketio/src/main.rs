fn main() -> std::process::ExitCode {
    service_runtime::main(gateway_socketio::SPEC, gateway_socketio::run)
}
