package jwtauth

// ParseAuthenticateResponse exposes parseAuthenticateResponse to the
// external tests and fuzz targets.
var ParseAuthenticateResponse = parseAuthenticateResponse

// Scrub exposes scrub to the external tests.
var Scrub = scrub

// ErrorDetails exposes errorDetails to the fuzz targets.
var ErrorDetails = errorDetails
