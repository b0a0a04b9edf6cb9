package benchreport

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// stubRun is a run with the figures the pipeline rows read.
func stubRun() *Run {
	return &Run{Started: time.Unix(0, 0), Machine: "test", Bench: map[string]map[string]float64{
		"aggregator/Aggregate/ceiling-postgres-copy": {"events/s": 10000},
		"aggregator/CeilingLikePipeline":             {"events/s": 5000, "events/batch": 2000},
	}, Pipeline: PipelineResult{Tenants: 100000, Batch: 500, Sustained: 4000, Steps: []Step{
		{Offered: 2500, Accepted: 2500, Kept: true, BatchRecords: 150, BatchTime: 100 * time.Millisecond},
		{Offered: 5000, Accepted: 4000, BatchRecords: 2000, BatchTime: time.Second},
	}}}
}

// TestReportShowsBothCeilings checks that the full report and the
// pipeline's own give the pipeline's ratio to each Postgres ceiling.
func TestReportShowsBothCeilings(t *testing.T) {
	t.Parallel()
	r := stubRun()
	var full, only bytes.Buffer
	r.Write(&full)
	r.WritePipelineOnly(&only, "1, 2, 3", "4, 5, 6")
	for name, out := range map[string]string{"full": full.String(), "pipeline only": only.String()} {
		for _, want := range []string{
			"ceiling like the pipeline",
			"| 5,000 |",       // the like-for-like ceiling
			"0.40",            // pipeline ÷ ceiling
			"0.80",            // pipeline ÷ the ceiling like the pipeline
			"| 2,000, 1000.0", // the last step's batches
		} {
			if !strings.Contains(out, want) {
				t.Errorf("%s report lacks %q:\n%s", name, want, out)
			}
		}
	}
	if !strings.Contains(only.String(), "before: 1, 2, 3; after: 4, 5, 6") {
		t.Errorf("the pipeline report lacks the load averages:\n%s", only.String())
	}
}

// TestLikeBatchIsTheLargestStepBatch checks the batch of the ceiling like
// the pipeline.
func TestLikeBatchIsTheLargestStepBatch(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		steps []Step
		want  int
	}{
		{nil, 1},
		{[]Step{{BatchRecords: 0.2}}, 1},
		{[]Step{{BatchRecords: 150, Kept: true}, {BatchRecords: 1999.6}}, 2000},
		{[]Step{{BatchRecords: 3000, Kept: true}, {BatchRecords: 10}}, 3000},
	} {
		if got := (PipelineResult{Steps: c.steps}).LikeBatch(); got != c.want {
			t.Errorf("steps %+v: LikeBatch %d, want %d", c.steps, got, c.want)
		}
	}
}
