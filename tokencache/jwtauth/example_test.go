package jwtauth_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/jwtauth"
)

// exampleIssuer is an offline stand-in for an authenticate-and-rotate API.
// POST /authenticate answers {"token": <jwt>} when the credentials match;
// GET /accounts answers with a rotated token in its Authorization header.
func exampleIssuer() *httptest.Server {
	mint := func(exp time.Time) string {
		return makeJWT(`{"alg":"HS256","typ":"JWT"}`, fmt.Sprintf(`{"sub":"svc","exp":%d}`, exp.Unix()), "example-secret")
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /authenticate", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if string(body) != `{"apiKey":"example-key","clientSecret":"example-secret"}` {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"code":"invalid-credentials","message":"API key or client secret is wrong"}`)
			return
		}
		fmt.Fprintf(w, `{"token":%q}`, mint(time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)))
	})
	mux.HandleFunc("GET /accounts", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Authorization", "Bearer "+mint(time.Date(2030, 1, 1, 13, 0, 0, 0, time.UTC)))
		fmt.Fprint(w, `[]`)
	})
	return httptest.NewServer(mux)
}

// exampleClock is the fixed time of the examples.
func exampleClock() time.Time { return time.Date(2030, 1, 1, 11, 0, 0, 0, time.UTC) }

func ExampleFetcher() {
	srv := exampleIssuer()
	defer srv.Close()

	f := jwtauth.New("example-key", "example-secret",
		jwtauth.WithBaseURL(srv.URL),
		jwtauth.WithHMACVerification(true),
		jwtauth.WithClock(exampleClock),
	)
	tok, err := f.Fetch(context.Background())
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	fmt.Println(tok.TokenType, "token expires", tok.Expiry.Format(time.RFC3339))
	// Output: Bearer token expires 2030-01-01T12:00:00Z
}

func ExampleFetcher_error() {
	srv := exampleIssuer()
	defer srv.Close()

	f := jwtauth.New("example-key", "wrong-secret", jwtauth.WithBaseURL(srv.URL))
	_, err := f.Fetch(context.Background())

	var e *jwtauth.Error
	if errors.As(err, &e) {
		fmt.Println(e.StatusCode, e.ErrorCode(), "retryable:", e.Retryable())
	}
	fmt.Println(err)
	// Output:
	// 401 invalid-credentials retryable: false
	// jwtauth: authenticate failed: HTTP 401 Unauthorized [invalid-credentials]: API key or client secret is wrong
}

func ExampleExpiryOf() {
	// {"alg":"HS256","typ":"JWT"} . {"sub":"svc","exp":1893499200} . signature
	const jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJzdmMiLCJleHAiOjE4OTM0OTkyMDB9.c2lnbmF0dXJl"
	exp, err := jwtauth.ExpiryOf(jwt)
	fmt.Println(exp.Format(time.RFC3339), err)

	_, err = jwtauth.ExpiryOf("not-a-jwt")
	fmt.Println(errors.Is(err, jwtauth.ErrMalformedToken), errors.Is(err, tokencache.ErrInvalidToken))
	// Output:
	// 2030-01-01T12:00:00Z <nil>
	// true true
}

func ExampleFetcher_FromResponse() {
	srv := exampleIssuer()
	defer srv.Close()

	f := jwtauth.New("example-key", "example-secret",
		jwtauth.WithBaseURL(srv.URL),
		jwtauth.WithHMACVerification(true),
		jwtauth.WithClock(exampleClock),
	)
	// In production the cache calls it on each API response:
	// tokencache.New(rdb, f, tokencache.WithRotation(f.FromResponse)).
	resp, err := http.Get(srv.URL + "/accounts")
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	resp.Body.Close()
	tok, ok, err := f.FromResponse(resp)
	fmt.Println(ok, err, "rotated token expires", tok.Expiry.Format(time.RFC3339))

	// A token signed with another key is refused, and the error does not
	// hold it.
	forged := &http.Response{Header: http.Header{}}
	forged.Header.Set("Authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE4OTM0OTkyMDB9.c2ln")
	_, ok, err = f.FromResponse(forged)
	fmt.Println(ok, errors.Is(err, jwtauth.ErrSignature))
	// Output:
	// true <nil> rotated token expires 2030-01-01T13:00:00Z
	// false true
}
