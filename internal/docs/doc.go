// Package docs holds tests that keep the documentation honest: the README's
// quick start must compile as written, and the README, the examples,
// docker-compose.yml and the Kubernetes CronJob must all name the same
// token (namespace).
package docs
