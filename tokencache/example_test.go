package tokencache_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/basiq"
	"github.com/tokencache/tokencache/tokencache/issuertest"
)

// Two replicas share one Redis: the issuer is called once for both.
func Example() {
	mr := miniredis.NewMiniRedis() // any Redis: here an in-process one
	if err := mr.Start(); err != nil {
		log.Fatal(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	var calls atomic.Int32
	issuer := tokencache.FetcherFunc(func(ctx context.Context) (tokencache.Token, error) {
		calls.Add(1) // a real Fetcher calls POST /token here
		return tokencache.Token{AccessToken: "eyJhbGciOi...", TokenType: "Bearer", Expiry: time.Now().Add(time.Hour)}, nil
	})

	ctx := context.Background()
	replica1, err := tokencache.New(rdb, issuer)
	if err != nil {
		log.Fatal(err)
	}
	defer replica1.Close()
	replica2, err := tokencache.New(rdb, issuer)
	if err != nil {
		log.Fatal(err)
	}
	defer replica2.Close()

	t1, err := replica1.Token(ctx)
	if err != nil {
		log.Fatal(err)
	}
	t2, err := replica2.Token(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("same token:", t1.AccessToken == t2.AccessToken)
	fmt.Println("issuer calls:", calls.Load())
	fmt.Println("header:", t1.HeaderValue())
	// Output:
	// same token: true
	// issuer calls: 1
	// header: Bearer eyJhbGciOi...
}

// WithTuning changes the timings the defaults set: here a longer lock
// lease for a slow issuer, two issuer calls per refresh at most, and no
// negative cache (-1 asks for zero where zero is a setting). Fields left
// zero keep their defaults. A value out of range names its field.
func ExampleWithTuning() {
	mr := miniredis.NewMiniRedis()
	if err := mr.Start(); err != nil {
		log.Fatal(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	issuer := tokencache.FetcherFunc(func(context.Context) (tokencache.Token, error) {
		return tokencache.Token{AccessToken: "eyJhbGciOi...", TokenType: "Bearer", Expiry: time.Now().Add(time.Hour)}, nil
	})

	cache, err := tokencache.New(rdb, issuer, tokencache.WithTuning(tokencache.Tuning{
		LockTTL:       30 * time.Second,
		RetryAttempts: 2,
		NegativeTTL:   -1,
	}))
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()
	tok, err := cache.Token(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("header:", tok.HeaderValue())

	_, err = tokencache.New(rdb, issuer, tokencache.WithTuning(tokencache.Tuning{LockTTL: time.Millisecond}))
	fmt.Println(err)
	var te *tokencache.TuningError
	if errors.As(err, &te) {
		fmt.Println("field:", te.Field)
	}
	// Output:
	// header: Bearer eyJhbGciOi...
	// tokencache: Tuning.LockTTL 1ms is below 10ms
	// field: LockTTL
}

// Inspect shows what operators see with redis-cli, without the token.
func ExampleHandle_Inspect() {
	mr := miniredis.NewMiniRedis()
	if err := mr.Start(); err != nil {
		log.Fatal(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	cache, err := tokencache.New(rdb, tokencache.FetcherFunc(func(context.Context) (tokencache.Token, error) {
		return tokencache.Token{AccessToken: "secret", Expiry: time.Now().Add(time.Hour)}, nil
	}))
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()
	ctx := context.Background()
	if _, err := cache.Token(ctx); err != nil {
		log.Fatal(err)
	}
	st, err := cache.Inspect(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(st.Key, st.Found, st.Generation, st.TTL > 59*time.Minute)
	// Output:
	// tokencache:{default}:server true 1 true
}

// Invalidate after the API rejected a token with 401: only that token is
// deleted, so a hundred replicas reporting the same 401 cause one refresh.
func ExampleHandle_Invalidate() {
	mr := miniredis.NewMiniRedis()
	if err := mr.Start(); err != nil {
		log.Fatal(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	var n atomic.Int32
	cache, err := tokencache.New(rdb, tokencache.FetcherFunc(func(context.Context) (tokencache.Token, error) {
		return tokencache.Token{AccessToken: fmt.Sprint("token-", n.Add(1)), Expiry: time.Now().Add(time.Hour)}, nil
	}))
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()
	ctx := context.Background()
	bad, _ := cache.Token(ctx)
	deleted, _ := cache.Invalidate(ctx, bad) // the first replica to see the 401
	again, _ := cache.Invalidate(ctx, bad)   // a late report of the same 401
	fresh, _ := cache.Token(ctx)
	fmt.Println(deleted, again, fresh.AccessToken)
	// Output:
	// true false token-2
}

// The README's quick start, against the fake Basiq issuer: a real program
// uses basiq.New(os.Getenv("BASIQ_API_KEY")) and the default base URL.
func Example_basiq() {
	issuer := issuertest.NewServer() // stands in for https://au-api.basiq.io
	defer issuer.Close()
	mr := miniredis.NewMiniRedis() // stands in for your Redis
	if err := mr.Start(); err != nil {
		log.Fatal(err)
	}
	defer mr.Close()

	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	fetcher := basiq.New(issuer.APIKey(), basiq.WithBaseURL(issuer.URL()))
	cache, err := tokencache.New(rdb, fetcher)
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()

	tok, err := cache.Token(context.Background()) // memory, else Redis, else one refresh for the fleet
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(tok.TokenType, "token, expires in about", time.Until(tok.Expiry).Round(time.Hour))

	// Every request through this client carries the shared token; a 401
	// invalidates it (once for the fleet) and the request is retried.
	api := &http.Client{Transport: cache.Transport(nil)}
	resp, err := api.Get(issuer.URL() + "/users/ea3a81a9/accounts")
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	fmt.Println(resp.Status, "issuer calls:", issuer.Stats().TokenCalls)
	// Output:
	// Bearer token, expires in about 1h0m0s
	// 200 OK issuer calls: 1
}
