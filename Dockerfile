# One image for every service of docker-compose.yml: the tokencache CLI and
# daemon, the example backend, and the fake issuer (cmd/fakeissuer, which
# serves tokencache/issuertest).
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/ ./cmd/tokencache ./cmd/fakeissuer ./examples/backend ./examples/cron ./examples/peruser

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/tokencache"]
CMD ["--help"]
