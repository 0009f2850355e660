//! Reading what the kernel sends back: acknowledgements and errors (with the kernel's
//! extended-ack message), and the rules of a `NFT_MSG_GETRULE` dump (comment and counter).

use netlink_packet_core::{
    DecodeError, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer, NlasIterator,
};

use super::encode::{
    Family, NFT_MSG_NEWRULE, NFTA_EXPR_DATA, NFTA_EXPR_NAME, NFTA_LIST_ELEM, NFTA_RULE_EXPRESSIONS,
    NFTA_RULE_TABLE, NFTA_RULE_USERDATA, UDATA_RULE_COMMENT, msg_type,
};

const NLMSGERR_ATTR_MSG: u16 = 1;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NFGENMSG_LEN: usize = 4;

/// One netlink message of a datagram.
#[derive(Debug)]
pub(super) struct Reply<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// The messages of one datagram, in order.
pub(super) fn replies(mut b: &[u8]) -> impl Iterator<Item = Result<Reply<'_>, DecodeError>> {
    std::iter::from_fn(move || {
        if b.is_empty() {
            return None;
        }
        let m = match NetlinkBuffer::new_checked(b) {
            Ok(m) => m,
            Err(e) => {
                b = &[];
                return Some(Err(e));
            }
        };
        let len = m.length() as usize;
        let reply = Reply {
            kind: m.message_type(),
            flags: m.flags(),
            seq: m.sequence_number(),
            payload: &b[16..len],
        };
        b = b.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some(Ok(reply))
    })
}

/// The attributes of `b`: (type without flags, value).
pub(super) fn attrs(b: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), DecodeError>> {
    NlasIterator::new(b).map(|r| {
        r.map(|nla| {
            let kind = nla.kind();
            let len = usize::from(nla.length());
            // new_checked guarantees 4 <= len <= the buffer's length.
            (kind, &nla.into_inner()[4..len])
        })
    })
}

/// What an `NLMSG_ERROR` says.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ack {
    /// Error code 0: the acknowledged message succeeded.
    Ok,
    /// The kernel refused a message: errno and, with extended acks, its explanation.
    Refused { errno: i32, message: Option<String> },
}

/// Decodes the payload of an `NLMSG_ERROR` whose header carried `flags`: the error code, the
/// request it answers (only its header when the socket caps acks), then, with extended acks,
/// attributes.
pub(super) fn ack(flags: u16, payload: &[u8]) -> Result<Ack, DecodeError> {
    let code = payload
        .get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| DecodeError::from("truncated netlink error message"))?;
    if code == 0 {
        return Ok(Ack::Ok);
    }
    let mut message = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        let orig_len = payload
            .get(4..8)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .unwrap_or(0);
        let echoed = if flags & NLM_F_CAPPED != 0 {
            16
        } else {
            orig_len.next_multiple_of(4)
        };
        if let Some(tlvs) = payload.get(4 + echoed..) {
            for a in attrs(tlvs) {
                let Ok((kind, value)) = a else { break };
                if kind == NLMSGERR_ATTR_MSG {
                    let end = value.iter().position(|&c| c == 0).unwrap_or(value.len());
                    let s = String::from_utf8_lossy(&value[..end]).trim().to_string();
                    message = (!s.is_empty()).then_some(s);
                }
            }
        }
    }
    Ok(Ack::Refused {
        errno: code.saturating_neg(),
        message,
    })
}

/// Whether a message is the end of a dump.
pub(super) fn is_done(r: &Reply<'_>) -> bool {
    r.kind == NLMSG_DONE
}

pub(super) fn is_error(r: &Reply<'_>) -> bool {
    r.kind == NLMSG_ERROR
}

/// A rule as a dump shows it, reduced to what the firewall reads back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DumpedRule {
    pub family: Option<Family>,
    pub table: String,
    /// The comment nft shows (libnftnl's comment TLV of the rule's user data).
    pub comment: Option<String>,
    /// (packets, bytes) of the rule's `counter` expression.
    pub counter: Option<(u64, u64)>,
}

fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

fn comment_of(udata: &[u8]) -> Option<String> {
    let mut b = udata;
    while b.len() >= 2 {
        let (kind, len) = (b[0], usize::from(b[1]));
        let value = b.get(2..2 + len)?;
        if kind == UDATA_RULE_COMMENT {
            let end = value.iter().position(|&c| c == 0).unwrap_or(value.len());
            return Some(String::from_utf8_lossy(&value[..end]).into_owned());
        }
        b = &b[2 + len..];
    }
    None
}

fn counter_of(exprs: &[u8]) -> Result<Option<(u64, u64)>, DecodeError> {
    for e in attrs(exprs) {
        let (kind, elem) = e?;
        if kind != NFTA_LIST_ELEM {
            continue;
        }
        let (mut name, mut data) = (None, None);
        for a in attrs(elem) {
            match a? {
                (NFTA_EXPR_NAME, v) => name = Some(v),
                (NFTA_EXPR_DATA, v) => data = Some(v),
                _ => {}
            }
        }
        if name != Some(b"counter\0".as_slice()) {
            continue;
        }
        let (mut packets, mut bytes) = (0, 0);
        for a in attrs(data.unwrap_or_default()) {
            match a? {
                (NFTA_COUNTER_PACKETS, v) => packets = be_u64(v).unwrap_or(0),
                (NFTA_COUNTER_BYTES, v) => bytes = be_u64(v).unwrap_or(0),
                _ => {}
            }
        }
        return Ok(Some((packets, bytes)));
    }
    Ok(None)
}

/// Decodes one `NFT_MSG_NEWRULE` message of a dump; `None` for any other message.
pub(super) fn dumped_rule(r: &Reply<'_>) -> Result<Option<DumpedRule>, DecodeError> {
    if r.kind != msg_type(NFT_MSG_NEWRULE) {
        return Ok(None);
    }
    let family = r
        .payload
        .first()
        .copied()
        .ok_or_else(|| DecodeError::from("rule message without nfgenmsg"))?;
    let mut rule = DumpedRule {
        family: Family::from_raw(family),
        table: String::new(),
        comment: None,
        counter: None,
    };
    for a in attrs(r.payload.get(NFGENMSG_LEN..).unwrap_or_default()) {
        match a? {
            (NFTA_RULE_TABLE, v) => {
                let end = v.iter().position(|&c| c == 0).unwrap_or(v.len());
                rule.table = String::from_utf8_lossy(&v[..end]).into_owned();
            }
            (NFTA_RULE_USERDATA, v) => rule.comment = comment_of(v),
            (NFTA_RULE_EXPRESSIONS, v) => rule.counter = counter_of(v)?,
            _ => {}
        }
    }
    Ok(Some(rule))
}
