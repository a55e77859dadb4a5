// Package docs holds tests that keep the documentation honest: the README's
// quick start must compile as written.
package docs
