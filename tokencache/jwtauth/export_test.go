package jwtauth

import "time"

// ParseAuthenticateResponse exposes parseAuthenticateResponse to the
// external tests and fuzz targets.
var ParseAuthenticateResponse = parseAuthenticateResponse

// Scrub exposes scrub to the external tests.
var Scrub = scrub

// ErrorDetails exposes errorDetails to the fuzz targets.
var ErrorDetails = errorDetails

// TimeoutOf exposes the per-request timeout a Fetcher applies.
func TimeoutOf(f *Fetcher) time.Duration { return f.timeout }
