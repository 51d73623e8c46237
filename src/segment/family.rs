//! Families: an ordered list of member segments with rules that partition the customers. Each
//! customer belongs to exactly one member: the first whose rule matches, else the catch-all.
//!
//! Each member is an ordinary segment (usable by `IsMember`, `in segment`, exports, events) whose
//! rule is derived: member k holds `rule_k and not (rule_1 or ... or rule_k-1)`, the catch-all
//! `not (rule_1 or ... or rule_n)`. Members have no lists and take no activities, so the partition
//! holds. A whole family is evaluated in one pass (each rule once, first match wins), and a customer
//! moving between two members is one event naming both.

use crate::error::{Error, Result};
use crate::segment::registry::{MAX_SEGMENT_NAME, SegmentDef, check_segment_id};
use crate::segment::rule::Rule;

/// Most members in a family, catch-all included.
pub const MAX_FAMILY_MEMBERS: usize = 50;

/// One member of a family.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilyMember {
    pub segment_id: String,
    pub name: String,
    /// The member's own rule; `None` for the catch-all (the last member).
    pub rule: Option<Rule>,
}

/// A family as defined.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Family {
    pub id: String,
    pub name: String,
    pub description: String,
    /// In order; the last is the catch-all.
    pub members: Vec<FamilyMember>,
    /// Built in (RFM): defined by the server, refused to callers' changes.
    pub builtin: bool,
}

impl Family {
    /// Checks ids, names and the shape: at least one ruled member, then the catch-all.
    pub fn check(&self) -> Result<()> {
        check_segment_id(&self.id).map_err(|e| e.within_field("family_id"))?;
        if self.name.trim().is_empty() || self.name.len() > MAX_SEGMENT_NAME {
            return Err(Error::invalid(
                "name",
                format!("must be 1 to {MAX_SEGMENT_NAME} bytes"),
            ));
        }
        if self.members.len() < 2 || self.members.len() > MAX_FAMILY_MEMBERS {
            return Err(Error::invalid(
                "members",
                format!(
                    "a family has 1 to {} members with rules, then a catch-all",
                    MAX_FAMILY_MEMBERS - 1
                ),
            ));
        }
        let last = self.members.len() - 1;
        for (i, m) in self.members.iter().enumerate() {
            let field = if i == last {
                "catch_all".to_string()
            } else {
                format!("members[{i}]")
            };
            check_segment_id(&m.segment_id).map_err(|e| e.within(&field))?;
            if m.name.trim().is_empty() || m.name.len() > MAX_SEGMENT_NAME {
                return Err(Error::invalid(
                    format!("{field}.name"),
                    format!("must be 1 to {MAX_SEGMENT_NAME} bytes"),
                ));
            }
            if i != last && m.rule.is_none() {
                return Err(Error::invalid(format!("{field}.rule"), "is required"));
            }
            if let Some(first) = self.members[..i]
                .iter()
                .position(|o| o.segment_id == m.segment_id)
            {
                return Err(Error::invalid(
                    format!("{field}.segment_id"),
                    format!("`{}` is also members[{first}]", m.segment_id),
                ));
            }
        }
        Ok(())
    }

    /// Index of the catch-all member.
    pub fn catch_all(&self) -> usize {
        self.members.len() - 1
    }

    /// The rule member `k` holds as a segment: its own, minus every earlier member's.
    pub fn derived_rule(&self, k: usize) -> Rule {
        let earlier: Vec<Rule> = self.members[..k.min(self.catch_all())]
            .iter()
            .filter_map(|m| m.rule.clone())
            .collect();
        // One earlier member is negated as it is, not as a one-rule `or`: the text form of a
        // one-rule `or` keeps parentheses the parsed rule loses, so the rule shown would change
        // after a restart.
        let none_earlier = || {
            Rule::Not(Box::new(match earlier.as_slice() {
                [one] => one.clone(),
                _ => Rule::Or(earlier.clone()),
            }))
        };
        match (&self.members[k].rule, earlier.is_empty()) {
            (Some(rule), true) => rule.clone(),
            (Some(rule), false) => Rule::And(vec![rule.clone(), none_earlier()]),
            (None, _) => none_earlier(),
        }
    }

    /// The segment definition of member `k`.
    pub fn member_def(&self, k: usize) -> SegmentDef {
        let m = &self.members[k];
        SegmentDef {
            id: m.segment_id.clone(),
            name: m.name.clone(),
            description: format!("Member {} of family `{}` ({})", k + 1, self.id, self.name),
            rule: Some(self.derived_rule(k)),
            ..SegmentDef::default()
        }
    }
}

/// The built-in RFM family: id `rfm`, members by score ranges, first match wins.
pub const RFM_FAMILY: &str = "rfm";

/// (segment id, name, rule over the scores) of the RFM members, in order.
pub const RFM_MEMBERS: &[(&str, &str, &str)] = &[
    (
        "rfm.champions",
        "Champions",
        "rfm_r >= 4 and rfm_f >= 4 and rfm_m >= 4",
    ),
    ("rfm.loyal", "Loyal", "rfm_r >= 3 and rfm_f >= 4"),
    (
        "rfm.potential-loyalist",
        "Potential loyalist",
        "rfm_r >= 4 and rfm_f between 2 and 3",
    ),
    ("rfm.new", "New", "rfm_r = 5 and rfm_f = 1"),
    ("rfm.promising", "Promising", "rfm_r = 4 and rfm_f = 1"),
    (
        "rfm.needs-attention",
        "Needs attention",
        "rfm_r = 3 and rfm_f between 2 and 3",
    ),
    ("rfm.about-to-sleep", "About to sleep", "rfm_r = 3 and rfm_f = 1"),
    (
        "rfm.cannot-lose-them",
        "Cannot lose them",
        "rfm_r <= 2 and rfm_f >= 4 and rfm_m >= 4",
    ),
    ("rfm.at-risk", "At risk", "rfm_r <= 2 and rfm_f >= 3"),
    ("rfm.hibernating", "Hibernating", "rfm_r = 2 and rfm_f <= 2"),
    ("rfm.lost", "Lost", "rfm_r = 1 and rfm_f <= 2"),
];

/// The catch-all of the RFM family: customers without orders (no scores).
pub const RFM_UNSCORED: (&str, &str) = ("rfm.unscored", "No orders yet");

/// The RFM family's definition.
pub fn rfm_family() -> Family {
    let mut members: Vec<FamilyMember> = RFM_MEMBERS
        .iter()
        .map(|(id, name, rule)| FamilyMember {
            segment_id: (*id).into(),
            name: (*name).into(),
            rule: Some(crate::segment::text::parse(rule).expect("built-in RFM rules parse")),
        })
        .collect();
    members.push(FamilyMember {
        segment_id: RFM_UNSCORED.0.into(),
        name: RFM_UNSCORED.1.into(),
        rule: None,
    });
    Family {
        id: RFM_FAMILY.into(),
        name: "RFM".into(),
        description: "Recency, frequency and monetary value in quintiles (Segments.Reclassify)".into(),
        members,
        builtin: true,
    }
}

// ---------------------------------------------------------------------------------------------
// On the store

/// A family with its members' sizes, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilyInfo {
    pub family: Family,
    pub sizes: Vec<u64>,
    pub reclassified_at: Option<i64>,
    /// The last reclassification's moves: (member left, if any; member entered; customers),
    /// largest first.
    pub last_moves: Vec<(Option<String>, String, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::text;

    #[test]
    fn rfm_members_cover_every_score_once_in_order() {
        // First match over every (R, F, M): every scored customer lands in a named member.
        let f = rfm_family();
        f.check().unwrap();
        let matches = |rule: &str, r: i64, fr: i64, m: i64| -> bool {
            // The rules only use =, <=, >=, between on the three scores: check them textually.
            rule.replace(" and rfm_", "|rfm_").split('|').all(|p| {
                let words: Vec<&str> = p.split_whitespace().collect();
                let v = match words[0] {
                    "rfm_r" => r,
                    "rfm_f" => fr,
                    _ => m,
                };
                match words[1] {
                    "=" => v == words[2].parse::<i64>().unwrap(),
                    "<=" => v <= words[2].parse::<i64>().unwrap(),
                    ">=" => v >= words[2].parse::<i64>().unwrap(),
                    "between" => {
                        v >= words[2].parse::<i64>().unwrap() && v <= words[4].parse::<i64>().unwrap()
                    }
                    other => panic!("operator {other}"),
                }
            })
        };
        for r in 1..=5 {
            for fr in 1..=5 {
                for m in 1..=5 {
                    assert!(
                        RFM_MEMBERS.iter().any(|(_, _, rule)| matches(rule, r, fr, m)),
                        "R{r} F{fr} M{m} matches no member"
                    );
                }
            }
        }
    }

    #[test]
    fn derived_rules_exclude_earlier_members() {
        let f = rfm_family();
        assert_eq!(f.derived_rule(0), f.members[0].rule.clone().unwrap());
        let Rule::And(parts) = f.derived_rule(2) else {
            panic!("member 3 is its rule and not the earlier ones")
        };
        assert_eq!(parts.len(), 2);
        let Rule::Not(earlier) = f.derived_rule(f.catch_all()) else {
            panic!("the catch-all is none of the others")
        };
        assert!(matches!(*earlier, Rule::Or(ref v) if v.len() == RFM_MEMBERS.len()));
        // Every derived rule reads the same once its text is parsed again (as after a restart),
        // a member after a single one-predicate member included.
        let member = |id: &str, rule: Option<&str>| FamilyMember {
            segment_id: id.into(),
            name: id.into(),
            rule: rule.map(|r| text::parse(r).unwrap()),
        };
        let value = Family {
            id: "value".into(),
            name: "value".into(),
            members: vec![
                member("value.big", Some("total_spent >= 1000")),
                member("value.mid", Some("total_spent >= 100")),
                member("value.small", None),
            ],
            ..Family::default()
        };
        for family in [&f, &value] {
            for k in 0..family.members.len() {
                let printed = text::print(&family.derived_rule(k));
                assert_eq!(
                    text::print(&text::parse(&printed).unwrap()),
                    printed,
                    "{} {k}",
                    family.id
                );
            }
        }
        let mut bad = f.clone();
        bad.members[3].segment_id = "rfm.champions".into();
        assert!(
            bad.check()
                .unwrap_err()
                .to_string()
                .contains("members[3].segment_id")
        );
    }
}
