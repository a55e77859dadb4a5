package cli

import (
	"context"
	"fmt"
	"io"
	"runtime/debug"
)

// runVersion prints what the binary was built from, as the Go toolchain
// recorded it (runtime/debug.ReadBuildInfo): the module version, the VCS
// revision, its time and whether the tree was modified, and the Go
// version. "tokencache --version" is the same.
func runVersion(_ context.Context, a *app, args []string) error {
	fs := a.newFlagSet("version")
	fs.Usage = a.subUsage(fs, "", "Print the module version, VCS revision and time, and Go version of this binary.")
	if err := a.parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("version: unexpected argument %q", fs.Arg(0))
	}
	info, ok := debug.ReadBuildInfo()
	writeVersion(a.env.Stdout, info, ok)
	return nil
}

// writeVersion prints info in four lines:
//
//	tokencache v1.4.0
//	revision 3f2a9c1e0b7d4a5f6e8c9d0a1b2c3d4e5f6a7b8c (modified)
//	time 2026-12-05T12:00:00Z
//	go go1.26.0
//
// A value the build did not record is "unknown": a binary built outside a
// VCS checkout, or with -buildvcs=false, has no revision; "go run" and
// "go build" in a checkout give "(devel)" or a pseudo-version.
func writeVersion(w io.Writer, info *debug.BuildInfo, ok bool) {
	version, goVersion := "unknown", "unknown"
	settings := map[string]string{}
	if ok && info != nil {
		if info.Main.Version != "" {
			version = info.Main.Version
		}
		if info.GoVersion != "" {
			goVersion = info.GoVersion
		}
		for _, s := range info.Settings {
			settings[s.Key] = s.Value
		}
	}
	rev := settings["vcs.revision"]
	if rev == "" {
		rev = "unknown"
	}
	if settings["vcs.modified"] == "true" {
		rev += " (modified)"
	}
	at := settings["vcs.time"]
	if at == "" {
		at = "unknown"
	}
	fmt.Fprintf(w, "tokencache %s\nrevision %s\ntime %s\ngo %s\n", version, rev, at, goVersion)
}
