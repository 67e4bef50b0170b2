fn main() -> std::process::ExitCode {
    service_runtime::main_with(
        stat_aggregator::SPEC,
        stat_aggregator::prepare,
        stat_aggregator::run,
    )
}
