# Sidekiq peer for scripts/bench/ratios.py (benchmark only; Debian: ruby-sidekiq + redis-server).
#
#   REDIS_URL=redis://127.0.0.1:PORT/0 ruby sidekiq_bench.rb push TOTAL PER_CALL THREADS [WARMUP]
#       push_bulk TOTAL jobs onto queue "bench", PER_CALL per call from THREADS threads, after
#       WARMUP (default 10) untimed calls; prints {"jobs":..,"seconds":..} on stdout.
#   REDIS_URL=... BENCH_DRAIN_JOBS=N BENCH_RESULT=FILE sidekiq -r ./sidekiq_bench.rb -q bench -c 10
#       one Sidekiq process working queue "bench"; when it has performed N jobs it writes
#       {"jobs":N,"seconds":..} to FILE: the time from the first job's start to the N-th's end.
#
# Jobs carry the same payload as zizq's benchmark jobs ({"n": 1}). Sidekiq's per-job log lines
# are turned off (level WARN): zizq and BullMQ log nothing per job either.
require "json"
require "logger"
require "sidekiq"

Sidekiq.logger.level = Logger::WARN
# redis-rb 4.8 (Debian's, with Sidekiq 6.4) warns on stderr at every push_bulk about `sadd`,
# whose result Sidekiq ignores: a cost no production setup pays per call.
Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)

class BenchJob
  include Sidekiq::Worker
  sidekiq_options queue: "bench"

  TARGET = Integer(ENV.fetch("BENCH_DRAIN_JOBS", "0"))
  LOCK = Mutex.new
  STATE = { count: 0, first: nil }

  def perform(_payload)
    now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    count = LOCK.synchronize do
      STATE[:first] ||= now
      STATE[:count] += 1
    end
    return unless count == TARGET

    finished = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    path = ENV.fetch("BENCH_RESULT")
    File.write("#{path}.tmp", JSON.dump({ jobs: count, seconds: finished - STATE[:first] }))
    File.rename("#{path}.tmp", path)
  end
end

def push(total, per_call, threads, warmup)
  Sidekiq.configure_client { |config| config.redis = { url: ENV.fetch("REDIS_URL"), size: threads } }
  args = Array.new(per_call) { [{ "n" => 1 }] }
  warmup.times { Sidekiq::Client.push_bulk("class" => BenchJob, "args" => args) }
  calls = total / per_call
  taken = 0
  lock = Mutex.new
  started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  workers = Array.new(threads) do
    Thread.new do
      loop do
        mine = lock.synchronize { taken += 1 }
        break if mine > calls

        jids = Sidekiq::Client.push_bulk("class" => BenchJob, "args" => args)
        raise "push_bulk pushed #{jids.size} of #{per_call}" unless jids.size == per_call
      end
    end
  end
  workers.each(&:join)
  elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
  puts JSON.dump({ jobs: calls * per_call, seconds: elapsed, warmup_jobs: warmup * per_call })
end

if $PROGRAM_NAME == __FILE__
  case ARGV[0]
  when "push" then push(Integer(ARGV[1]), Integer(ARGV[2]), Integer(ARGV[3]), Integer(ARGV[4] || 10))
  when "version" then puts JSON.dump({ sidekiq: Sidekiq::VERSION, ruby: RUBY_VERSION })
  else abort "usage: ruby sidekiq_bench.rb push TOTAL PER_CALL THREADS [WARMUP] | version"
  end
end
