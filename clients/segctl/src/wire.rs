//! `LoadCustomersRequest` as segctl sends it: customers encoded straight from file rows into one
//! buffer per batch, without building a `Customer` message (and its map) per row. The bytes on
//! the wire are those of `repeated Customer customers = 1`.

use bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

use crate::pb;

#[derive(Clone, Default, PartialEq)]
pub struct EncodedCustomers {
    buf: Vec<u8>,
    count: usize,
}

impl EncodedCustomers {
    pub fn with_capacity(bytes: usize) -> Self {
        EncodedCustomers {
            buf: Vec::with_capacity(bytes),
            count: 0,
        }
    }

    /// Appends one encoded `Customer` (from [`CustomerWriter`]).
    pub fn push_encoded(&mut self, customer: &[u8]) {
        encoding::encode_key(1, WireType::LengthDelimited, &mut self.buf);
        encoding::encode_varint(customer.len() as u64, &mut self.buf);
        self.buf.extend_from_slice(customer);
        self.count += 1;
    }

    pub fn len(&self) -> usize {
        self.count
    }
}

impl std::fmt::Debug for EncodedCustomers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "EncodedCustomers({} customers, {} bytes)",
            self.count,
            self.buf.len()
        )
    }
}

impl Message for EncodedCustomers {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.buf);
    }

    /// Kept as bytes; segctl never receives this message.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag == 1 {
            let mut customer = Vec::new();
            encoding::bytes::merge(wire_type, &mut customer, buf, ctx)?;
            self.push_encoded(&customer);
            Ok(())
        } else {
            encoding::skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
    }
}

/// Encodes one `Customer` field by field.
pub struct CustomerWriter<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> CustomerWriter<'a> {
    /// Starts a customer in `out` (cleared first).
    pub fn new(out: &'a mut Vec<u8>, customer_id: &str) -> Self {
        out.clear();
        string_field(1, customer_id, out);
        CustomerWriter { out }
    }

    pub fn email(&mut self, email: &str) {
        string_field(2, email, self.out);
    }

    /// One `attributes` map entry.
    pub fn attribute(&mut self, name: &str, value: &pb::Value) {
        let value_len = value.encoded_len();
        let entry_len = 1
            + encoding::encoded_len_varint(name.len() as u64)
            + name.len()
            + 1
            + encoding::encoded_len_varint(value_len as u64)
            + value_len;
        encoding::encode_key(3, WireType::LengthDelimited, self.out);
        encoding::encode_varint(entry_len as u64, self.out);
        string_field(1, name, self.out);
        encoding::message::encode(2, value, self.out);
    }
}

fn string_field(tag: u32, s: &str, out: &mut Vec<u8>) {
    encoding::encode_key(tag, WireType::LengthDelimited, out);
    encoding::encode_varint(s.len() as u64, out);
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::value::Kind;

    #[test]
    fn same_bytes_as_messages() {
        let value = pb::Value {
            kind: Some(Kind::StringValue("F".into())),
        };
        let c = pb::Customer {
            customer_id: "C1".into(),
            email: Some("a@b.fr".into()),
            attributes: [("gender".to_string(), value.clone())].into_iter().collect(),
        };
        let mut one = Vec::new();
        let mut w = CustomerWriter::new(&mut one, "C1");
        w.email("a@b.fr");
        w.attribute("gender", &value);
        assert_eq!(one, c.encode_to_vec());
        let mut batch = EncodedCustomers::default();
        batch.push_encoded(&one);
        batch.push_encoded(&one);
        #[derive(Clone, PartialEq, prost::Message)]
        struct Generic {
            #[prost(message, repeated, tag = "1")]
            customers: Vec<pb::Customer>,
        }
        let decoded = Generic::decode(batch.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.customers, vec![c.clone(), c]);
    }
}
