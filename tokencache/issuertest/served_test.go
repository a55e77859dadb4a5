package issuertest

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "copy the served fixtures again from testdata/basiq")

// shared is the repository's testdata/basiq, the one source of truth.
var shared = filepath.Join("..", "..", "testdata", "basiq")

// TestServedMatchesTestdata keeps the fake's embedded answers identical to
// the shared fixtures: every file in served/ is a byte-for-byte copy of
// testdata/basiq, and every error fixture of testdata/basiq is served. With
// -update it copies them again.
func TestServedMatchesTestdata(t *testing.T) {
	errs, err := filepath.Glob(filepath.Join(shared, "error_*.json"))
	if err != nil || len(errs) == 0 {
		t.Fatalf("no error fixtures in %s: %v", shared, err)
	}
	want := map[string]bool{"accounts.json": true, "job_failed.json": true, "error_bad-gateway.html": true}
	for _, p := range errs {
		want[filepath.Base(p)] = true
	}
	if *update {
		old, _ := filepath.Glob(filepath.Join("served", "*"))
		for _, p := range old {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		}
		for name := range want {
			b, err := os.ReadFile(filepath.Join(shared, name))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join("served", name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		t.Log("copied; rebuild to embed them")
		return
	}
	got := map[string]bool{}
	for _, name := range servedFiles() {
		got[name] = true
		embedded, err := served.ReadFile("served/" + name)
		if err != nil {
			t.Fatal(err)
		}
		fixture, err := os.ReadFile(filepath.Join(shared, name))
		if err != nil {
			t.Errorf("served/%s has no fixture in testdata/basiq: %v", name, err)
			continue
		}
		if !bytes.Equal(embedded, fixture) {
			t.Errorf("served/%s differs from testdata/basiq/%s: run go test -run TestServedMatchesTestdata -update", name, name)
		}
		if filepath.Ext(name) == ".json" && !json.Valid(embedded) {
			t.Errorf("served/%s is not JSON", name)
		}
	}
	for name := range want {
		if !got[name] {
			t.Errorf("testdata/basiq/%s is not served: run go test -run TestServedMatchesTestdata -update", name)
		}
	}
	// Every error fixture made it into the catalogue.
	for name := range want {
		if stem, ok := errorStem(name); ok {
			if _, ok := errorCatalogue()[stem]; !ok {
				t.Errorf("%s: not in the error catalogue (want one Basiq error object with a code)", name)
			}
		}
	}
	if len(accountTemplates()) == 0 {
		t.Error("served/accounts.json holds no accounts")
	}
	if !bytes.Contains(proxyErrorPage(), []byte("<html>")) {
		t.Error("served/error_bad-gateway.html is not an HTML page")
	}
	if failedStepResult() == nil {
		t.Error("served/job_failed.json has no failed step with a result")
	}
}

func errorStem(name string) (string, bool) {
	if len(name) > len("error_.json") && name[:6] == "error_" && filepath.Ext(name) == ".json" {
		return name[6 : len(name)-5], true
	}
	return "", false
}
