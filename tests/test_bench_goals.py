"""The search benchmark's goal lines (``scripts/benchmark.py --bench=search``): each verdict
follows from the run's own figures, and figures a run lacks are left out."""

from fna_jax.bench import search as search_bench

GB = 1 << 30


def _summary(weight_fixed_s, standalone_s, fused_img_s, weight_first_s, arch_first_s):
  return {'median_s': {'weight_fixed': weight_fixed_s, 'standalone': standalone_s},
          'min_s': {'weight_fixed': 0.9 * weight_fixed_s, 'standalone': 0.6 * standalone_s},
          'img_s': {'arch': 2.0, 'arch_fused': fused_img_s},
          'xla_temp_bytes': {'weight': 1 * GB, 'standalone': 2 * GB},
          'first_call_s': {'weight': weight_first_s, 'arch': arch_first_s}}


def _rss(weight_gb, standalone_gb):
  return {'weight': {'steps_peak_rss': weight_gb * GB},
          'standalone': {'steps_peak_rss': standalone_gb * GB}}


def test_goal_verdicts_follow_the_figures():
  lines = search_bench.goal_lines(_summary(1.6, 1.4, 0.4, 116.0, 45.0), _rss(4.25, 3.68))
  assert lines == [
      "weight step (path P) time / standalone arch(P)'s: 1.14 (fastest steps 1.71; goal <= 1.0 "
      'on the medians: MISSED)',
      "weight step XLA temporaries / standalone arch(P)'s: 0.50 (goal <= 1.3: met)",
      "weight step peak RSS / standalone arch(P)'s: 1.15 (goal <= 1.3: met)",
      "fused relaxed op speed / naive sum's: 0.20 (goal >= 1.5: MISSED)",
      'weight step (random paths) first call: 116 s (goal <= 60 s: MISSED)',
      'arch step (all paths) first call: 45 s (goal <= 60 s: met)']
  faster = search_bench.goal_lines(_summary(1.0, 1.2, 3.2, 50.0, 61.0), _rss(5.0, 3.0))
  assert [line.rsplit(': ', 1)[1] for line in faster] == [
      'met)', 'met)', 'MISSED)', 'met)', 'met)', 'MISSED)']


def test_goal_lines_skip_memory_a_run_did_not_measure():
  summary = _summary(1.0, 1.0, 1.0, 1.0, 1.0)
  summary['xla_temp_bytes'] = {}   # no XLA buffer analysis of any step
  lines = search_bench.goal_lines(summary, {})
  assert not any('temporaries' in line or 'RSS' in line for line in lines)
  assert len(lines) == 4
