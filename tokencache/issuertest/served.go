package issuertest

import (
	"embed"
	"encoding/json"
	"io/fs"
	"path"
	"strings"
	"sync"
)

// served holds the Basiq answers the fake serves: error titles and
// details, a proxy's HTML error page (GarbageNotJSON), the accounts a
// connected user gets, and the result of a failed job step. They are byte-for-byte copies of the repository's shared
// fixtures in testdata/basiq, embedded so that the fake works wherever it
// is built (cmd/fakeissuer, the demo, an installed binary).
// TestServedMatchesTestdata fails when a copy differs from its fixture;
//
//	go test ./tokencache/issuertest -run TestServedMatchesTestdata -update
//
// copies them again.
//
//go:embed served
var served embed.FS

// servedFiles lists the files of the shared testdata/basiq that the fake
// embeds and serves, by name.
func servedFiles() []string {
	names, _ := fs.Glob(served, "served/*")
	for i, n := range names {
		names[i] = path.Base(n)
	}
	return names
}

// apiErrorText is a Basiq error's title and detail, by code.
type apiErrorText struct {
	Code, Title, Detail string
}

// errorCatalogue maps the name of each served/error_<name>.json to the
// error it holds. The name is the Basiq code, except "not-found": the
// parameter-not-valid answered with 404 once a partner account is deleted.
var errorCatalogue = sync.OnceValue(func() map[string]apiErrorText {
	m := make(map[string]apiErrorText)
	names, _ := fs.Glob(served, "served/error_*.json")
	for _, n := range names {
		b, err := served.ReadFile(n)
		if err != nil {
			continue
		}
		var body struct {
			Data []apiErrorText `json:"data"`
		}
		if json.Unmarshal(b, &body) != nil || len(body.Data) != 1 || body.Data[0].Code == "" {
			continue // TestServedMatchesTestdata checks every file parses
		}
		name := strings.TrimSuffix(strings.TrimPrefix(path.Base(n), "error_"), ".json")
		m[name] = body.Data[0]
	}
	return m
})

// proxyErrorPage is an HTML error page from a proxy in front of the
// issuer: served/error_bad-gateway.html.
func proxyErrorPage() []byte {
	b, _ := served.ReadFile("served/error_bad-gateway.html")
	return b
}

// accountTemplates returns fresh copies of the accounts in
// served/accounts.json, to be given ids and links for one connection.
func accountTemplates() []map[string]any {
	b, err := served.ReadFile("served/accounts.json")
	if err != nil {
		return nil
	}
	var list struct {
		Data []map[string]any `json:"data"`
	}
	if json.Unmarshal(b, &list) != nil {
		return nil
	}
	return list.Data
}

// failedStepResult is the result of the failed step in
// served/job_failed.json: Basiq's invalid-credentials error (null if the
// file cannot be read, which TestServedMatchesTestdata rules out).
var failedStepResult = sync.OnceValue(func() json.RawMessage {
	b, err := served.ReadFile("served/job_failed.json")
	if err == nil {
		var job struct {
			Steps []struct {
				Status string          `json:"status"`
				Result json.RawMessage `json:"result"`
			} `json:"steps"`
		}
		if json.Unmarshal(b, &job) == nil {
			for _, st := range job.Steps {
				if st.Status == StepFailed && len(st.Result) > 0 {
					return st.Result
				}
			}
		}
	}
	return nil
})
