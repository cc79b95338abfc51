# syntax=docker/dockerfile:1
# Build a wheel in one stage, install it into a clean slim image in the next; run as a non-root user.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY authproxy ./authproxy
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.12-slim
RUN useradd --system --uid 10001 --no-create-home authproxy
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
EXPOSE 4180
ENTRYPOINT ["authproxy"]
CMD ["serve", "-c", "/etc/authproxy/config.toml"]
