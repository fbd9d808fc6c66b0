//! W3C trace context (GUARANTEES.md: "Operations"): a request's
//! `traceparent` is continued, else a trace starts; the request's log line
//! carries its `trace_id`, and every downstream call made for it sends a
//! `traceparent` of the same trace with a span of its own. The context
//! travels with the request's task (`scope`), so the use cases and ports
//! between the edge and the HTTP client carry nothing for it. Pure but for
//! the randomness of new ids.

/// One span's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

impl TraceContext {
    /// A `traceparent` header's context, or None when it is not one
    /// (W3C Trace Context, level 1: `00-<32 hex>-<16 hex>-<2 hex>`, lower
    /// case, ids not all zero; a later version's first four fields, as the
    /// specification asks; version `ff` never).
    pub fn parse(header: &str) -> Option<TraceContext> {
        let mut fields = header.trim().split('-');
        let version = fields.next()?;
        let (trace, span, flags) = (fields.next()?, fields.next()?, fields.next()?);
        if version.len() != 2 || version == "ff" || !lower_hex(version) {
            return None;
        }
        if version == "00" && fields.next().is_some() {
            return None;
        }
        let trace_id: [u8; 16] = decode(trace)?;
        let span_id: [u8; 8] = decode(span)?;
        let [flags]: [u8; 1] = decode(flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The first span of a new trace.
    pub fn start() -> TraceContext {
        TraceContext {
            trace_id: nonzero(),
            span_id: nonzero(),
            sampled: true,
        }
    }

    /// A span of this trace below this one.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            span_id: nonzero(),
            ..*self
        }
    }

    /// The `traceparent` header that names this span.
    pub fn header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            self.trace_id_hex(),
            hex::encode(self.span_id),
            u8::from(self.sampled)
        )
    }

    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// Runs `fut` with this context as the current one. Not an `async
    /// fn`: that would hold `fut` twice, as its argument and inside the
    /// task-local future, doubling every request task's size.
    pub fn scope<F: std::future::Future>(
        self,
        fut: F,
    ) -> tokio::task::futures::TaskLocalFuture<TraceContext, F> {
        CURRENT.scope(self, fut)
    }

    /// The context of the request this task serves, if any.
    pub fn current() -> Option<TraceContext> {
        CURRENT.try_with(|c| *c).ok()
    }
}

fn lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn decode<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 || !lower_hex(s) {
        return None;
    }
    hex::decode(s).ok()?.try_into().ok()
}

/// Random bytes, not all zero (an all-zero id is invalid).
fn nonzero<const N: usize>() -> [u8; N] {
    loop {
        let mut id = [0u8; N];
        for b in &mut id {
            *b = fastrand::u8(..);
        }
        if id != [0; N] {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specifications_example_is_read_and_written_back() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::parse(header).unwrap();
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(ctx.sampled);
        assert_eq!(ctx.header(), header);
        let child = ctx.child();
        assert_eq!(child.trace_id, ctx.trace_id);
        assert_ne!(child.span_id, ctx.span_id);
        // A later version: its first four fields.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra";
        assert!(!TraceContext::parse(later).unwrap().sampled);
    }

    #[test]
    fn what_is_not_a_traceparent_starts_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e47é6-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
        let fresh = TraceContext::start();
        assert_ne!(fresh.trace_id, [0; 16]);
        assert_eq!(TraceContext::parse(&fresh.header()), Some(fresh));
    }
}
