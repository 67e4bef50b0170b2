fn main() -> std::process::ExitCode {
    service_runtime::main(integrations_runner::SPEC, integrations_runner::run)
}
