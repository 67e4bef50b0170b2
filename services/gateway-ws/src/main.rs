fn main() -> std::process::ExitCode {
    service_runtime::main(gateway_ws::SPEC, gateway_ws::run)
}
