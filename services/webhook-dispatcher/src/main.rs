fn main() -> std::process::ExitCode {
    service_runtime::main(webhook_dispatcher::SPEC, webhook_dispatcher::run)
}
