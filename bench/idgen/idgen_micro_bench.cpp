// Cost of one call on idgen's hot paths. The generator benchmarks use a layout
// with 22 sequence bits so the per-tick limit never binds and the figure is the
// raw cost of next() (one clock read and one compare-and-swap).
#include <benchmark/benchmark.h>

#include "idgen/encoding.hpp"
#include "idgen/snowflake.hpp"
#include "idgen/uuid.hpp"

namespace {

idgen::Generator& wide_generator() {
  static idgen::Generator generator(idgen::Layout::parse("time=41,worker=0,seq=22"), 0);
  return generator;
}

void generator_next_unbounded(benchmark::State& state) {
  auto& generator = wide_generator();
  for (auto _ : state) benchmark::DoNotOptimize(generator.next());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(generator_next_unbounded)->Threads(1)->Threads(2)->UseRealTime();

void generator_next_standard(benchmark::State& state) {
  static idgen::Generator generator(idgen::Layout::standard(), 1);
  for (auto _ : state) benchmark::DoNotOptimize(generator.next());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(generator_next_standard)->Threads(1)->Threads(2)->UseRealTime();

void system_clock_read(benchmark::State& state) {
  const auto clock = idgen::SystemClock::shared();
  for (auto _ : state) benchmark::DoNotOptimize(clock->now_unix_ms());
}
BENCHMARK(system_clock_read);

void encode_id(benchmark::State& state) {
  const auto encoding = static_cast<idgen::Encoding>(state.range(0));
  std::uint64_t id = 119093682119913472;
  for (auto _ : state) benchmark::DoNotOptimize(idgen::encode(++id, encoding));
}
BENCHMARK(encode_id)->DenseRange(0, 3);

void decode_id(benchmark::State& state) {
  const auto encoding = static_cast<idgen::Encoding>(state.range(0));
  const std::string text = idgen::encode(119093682119913472, encoding);
  for (auto _ : state) benchmark::DoNotOptimize(idgen::decode(text, encoding));
}
BENCHMARK(decode_id)->DenseRange(0, 3);

void uuid_v7_next(benchmark::State& state) {
  static idgen::UuidV7Generator generator;
  for (auto _ : state) benchmark::DoNotOptimize(generator.next());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(uuid_v7_next);

void uuid_v4_next(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(idgen::uuid_v4());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(uuid_v4_next);

}  // namespace

BENCHMARK_MAIN();
