fn main() -> std::process::ExitCode {
    service_runtime::main_with(gateway_ws::SPEC, gateway_ws::prepare, gateway_ws::run)
}
