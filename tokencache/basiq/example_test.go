package basiq_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/basiq"
	"github.com/tokencache/tokencache/tokencache/issuertest"
)

// A SERVER_ACCESS token from a fake Basiq. In production, drop the
// options: basiq.New(os.Getenv("BASIQ_API_KEY")).
func Example() {
	srv := issuertest.NewServer()
	defer srv.Close()

	sent := time.Date(2025, 3, 14, 9, 0, 0, 0, time.UTC)
	f := basiq.New(srv.APIKey(),
		basiq.WithBaseURL(srv.URL()),
		basiq.WithClock(func() time.Time { return sent }), // for a stable Output
	)
	tok, err := f.Fetch(context.Background())
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(tok.TokenType, "expires", tok.Expiry.Format(time.Kitchen))
	fmt.Println("issuer calls:", srv.Stats().TokenCalls)
	// Output:
	// Bearer expires 10:00AM
	// issuer calls: 1
}

// A CLIENT_ACCESS token is bound to one user: Basiq's Consent UI takes it.
func ExampleFetcher_ForUser() {
	srv := issuertest.NewServer()
	defer srv.Close()

	server := basiq.New(srv.APIKey(), basiq.WithBaseURL(srv.URL()))
	client, err := server.ForUser("a920c00f-df79-4a12-b711-2ac461c8090b")
	if err != nil {
		fmt.Println(err)
		return
	}
	if _, err := client.Fetch(context.Background()); err != nil {
		fmt.Println(err)
		return
	}
	r := srv.Requests()[0]
	fmt.Println(r.Scope, r.UserID)

	_, err = server.ForUser("")
	fmt.Println(err)
	fmt.Println(errors.Is(err, tokencache.ErrInvalidUserID))
	// Output:
	// CLIENT_ACCESS a920c00f-df79-4a12-b711-2ac461c8090b
	// basiq: CLIENT_ACCESS tokens must be bound to a valid userId: tokencache: invalid user id: empty
	// true
}

// Basiq's answer is in the error: its status, code and correlationId,
// and whether retrying can help.
func ExampleError() {
	srv := issuertest.NewServer()
	defer srv.Close()
	srv.FailNext(1, issuertest.Fail(403, "access-denied"))

	_, err := basiq.New(srv.APIKey(), basiq.WithBaseURL(srv.URL())).Fetch(context.Background())
	var be *basiq.Error
	if errors.As(err, &be) {
		fmt.Println(be.Status, be.Code, be.Title)
		fmt.Println("retryable:", be.Retryable())
		fmt.Println("has correlationId:", be.CorrelationID != "")
	}
	// Output:
	// 403 access-denied Access denied
	// retryable: false
	// has correlationId: true
}

// A 429 tells the caller how long to back off.
func ExampleError_RetryAfter() {
	srv := issuertest.NewServer()
	defer srv.Close()
	f := issuertest.Fail(429, "")
	f.RetryAfter = "30"
	srv.FailNext(1, f)

	_, err := basiq.New(srv.APIKey(), basiq.WithBaseURL(srv.URL())).Fetch(context.Background())
	var be *basiq.Error
	if errors.As(err, &be) {
		fmt.Println(be.Code, be.Retryable(), be.RetryAfter())
	}
	// Output:
	// too-many-requests true 30s
}

// A printed Fetcher names its key by fingerprint only.
func ExampleFetcher_String() {
	f := basiq.New("my-secret-api-key")
	fmt.Println(f)
	// Output:
	// basiq.Fetcher(https://au-api.basiq.io SERVER_ACCESS key sha256:5e687f6e9c234a52)
}
