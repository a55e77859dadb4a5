package tokencache

import (
	"testing"

	"github.com/redis/go-redis/v9"
)

// NewTestCache is newCache with fastOpts for the tests of package
// tokencache_test, which cannot see either: one helper for both.
func NewTestCache(t testing.TB, rdb redis.UniversalClient, f Fetcher, opts ...Option) *Cache {
	t.Helper()
	return newCache(t, rdb, f, fastOpts(opts...)...)
}

// NewTestRedis is miniBackend's client for the tests of package
// tokencache_test.
func NewTestRedis(t testing.TB) redis.UniversalClient {
	t.Helper()
	rdb, _ := miniBackend(t)
	return rdb
}

// WithL1ForTest is withL1, the test hook that turns the in-process copy
// off, for the tests of package tokencache_test.
var WithL1ForTest = withL1
