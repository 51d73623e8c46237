//! `LoadCustomersRequest` as segctl sends it: each customer encoded straight from its file row,
//! without building a `Customer` message (and its map) per row. The bytes on the wire are those of
//! `repeated Customer customers = 1`.

use bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

use crate::pb;

#[derive(Clone, Default, PartialEq)]
pub struct EncodedCustomers {
    /// One encoded `Customer` each (from [`CustomerWriter`]), written out as field 1.
    customers: Vec<Vec<u8>>,
}

impl From<Vec<Vec<u8>>> for EncodedCustomers {
    fn from(customers: Vec<Vec<u8>>) -> Self {
        EncodedCustomers { customers }
    }
}

impl std::fmt::Debug for EncodedCustomers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncodedCustomers({} customers)", self.customers.len())
    }
}

impl Message for EncodedCustomers {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for c in &self.customers {
            encoding::bytes::encode(1, c, buf);
        }
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
            self.customers.push(customer);
            Ok(())
        } else {
            encoding::skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        self.customers
            .iter()
            .map(|c| encoding::bytes::encoded_len(1, c))
            .sum()
    }

    fn clear(&mut self) {
        self.customers.clear();
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
        let batch = EncodedCustomers::from(vec![one.clone(), one]);
        #[derive(Clone, PartialEq, prost::Message)]
        struct Generic {
            #[prost(message, repeated, tag = "1")]
            customers: Vec<pb::Customer>,
        }
        let decoded = Generic::decode(batch.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.customers, vec![c.clone(), c]);
    }
}
