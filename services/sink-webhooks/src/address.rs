//! (stub until the helper's address guard lands)

#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    pub allow: Vec<ipnet::IpNet>,
}

impl AddressPolicy {
    pub fn new(allow: Vec<ipnet::IpNet>) -> Self {
        Self { allow }
    }
}
