fn main() -> std::process::ExitCode {
    service_runtime::main_with(
        webhook_dispatcher::SPEC,
        webhook_dispatcher::prepare,
        webhook_dispatcher::run,
    )
}
