// Package faulttest holds the fault-injection integration tests of
// tokencache: real redis-server processes started by the tests, replicas
// that are separate OS processes (the test binary re-executed) so that
// SIGKILL and SIGSTOP are real faults, a fake HTTP issuer whose latency and
// failures the test controls, and a TCP fault proxy between the replicas
// and Redis.
//
// The package has no code outside its tests. It uses only the exported
// API of tokencache, as a program would. docs/faults.md lists each
// scenario, how it is injected and what is asserted. The default run
// includes a short soak; a longer one is
//
//	go test ./internal/faulttest -run TestSoak -soak=2m -v
package faulttest
