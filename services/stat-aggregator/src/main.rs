fn main() -> std::process::ExitCode {
    service_runtime::main(stat_aggregator::SPEC, stat_aggregator::run)
}
