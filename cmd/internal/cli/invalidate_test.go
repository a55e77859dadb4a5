package cli

import (
	"regexp"
	"strings"
	"testing"
)

var inspectGeneration = regexp.MustCompile(`(?m)^GENERATION\s+(\d+)$`)
var inspectFingerprint = regexp.MustCompile(`fingerprint (sha256:[0-9a-f]+)`)

// TestInvalidateTellsTheTruth checks invalidate's status line: the
// generation it deleted (also when only --fingerprint names the token),
// "no token cached" when there is none, and exit status 3 whenever
// nothing was deleted.
func TestInvalidateTellsTheTruth(t *testing.T) {
	o := newOffline(t)
	for range 5 { // generation 5
		if _, _, err := o.run(t, "refresh", "--force"); err != nil {
			t.Fatal(err)
		}
	}
	table, _, err := o.run(t, "inspect")
	if err != nil {
		t.Fatal(err)
	}
	gm, fm := inspectGeneration.FindStringSubmatch(table), inspectFingerprint.FindStringSubmatch(table)
	if gm == nil || fm == nil {
		t.Fatalf("inspect: no generation or fingerprint in\n%s", table)
	}
	gen, fp := gm[1], fm[1]
	if gen != "5" {
		t.Fatalf("generation %s after five refreshes", gen)
	}

	// Another token named: nothing deleted, status 3, the cached one named.
	out, stderr, err := o.run(t, "invalidate", "--fingerprint", "sha256:0000000000000000")
	if ExitCode(err) != ExitNothingDeleted || !strings.Contains(out, "invalidated=false") || !strings.Contains(out, "generation 5") {
		t.Errorf("invalidate another token: exit %d, stdout %q", ExitCode(err), out)
	}
	if stderr != "" || err.Error() != "" {
		t.Errorf("invalidate another token: stderr %q, message %q: the status line says it all", stderr, err)
	}

	// The cached token by fingerprint alone: the generation deleted is 5.
	out, _, err = o.run(t, "invalidate", "--fingerprint", fp)
	if err != nil || !strings.Contains(out, "invalidated=true") || !strings.Contains(out, "generation="+gen) {
		t.Errorf("invalidate --fingerprint %s: err %v, stdout %q: want invalidated=true generation=%s", fp, err, out, gen)
	}

	// Nothing cached now: said so, with or without a fingerprint.
	for _, args := range [][]string{{"invalidate"}, {"invalidate", "--fingerprint", fp}} {
		out, _, err = o.run(t, args...)
		if ExitCode(err) != ExitNothingDeleted || !strings.Contains(out, `reason="no token cached"`) {
			t.Errorf("%v with nothing cached: exit %d, stdout %q: want status %d and \"no token cached\"", args, ExitCode(err), out, ExitNothingDeleted)
		}
		if strings.Contains(out, "changed meanwhile") {
			t.Errorf("%v with nothing cached: %q", args, out)
		}
	}
}
