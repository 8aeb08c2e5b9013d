//! The attributes the derive reads: its own `#[cache(...)]` and `#[scope(...)]`, and the
//! parts of SeaORM's `#[sea_orm(...)]` and Diesel's `#[diesel(...)]` that name a table, a
//! primary key and columns.
//!
//! Each attribute is parsed into a typed value that keeps the user's tokens for spans.
//! Problems are recorded in the [`Ctxt`] and parsing goes on, so one build reports all of
//! them.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Expr, Ident, LitStr, Token};

use super::ctxt::Ctxt;

/// `#[cache(...)]`: this derive's options.
pub const CACHE: &str = "cache";
/// `#[scope(...)]`: one extractor and condition type per attribute.
pub const SCOPE: &str = "scope";
/// `#[sea_orm(...)]`: read, never required.
pub const SEA_ORM: &str = "sea_orm";

/// `#[diesel(...)]`: read, never required.
pub const DIESEL: &str = "diesel";

/// `#[cache(entity = "...")]` on the struct.
pub const ENTITY: &str = "entity";
/// `#[cache(crate = "...")]` on the struct.
pub const CRATE: &str = "crate";
/// `#[cache(key)]` on a field.
pub const KEY: &str = "key";
/// `#[cache(related)]` on a field.
pub const RELATED: &str = "related";
/// `#[cache(fold = "ci_ai")]` on a field: how its column's collation compares strings.
pub const FOLD: &str = "fold";
/// The values of `fold = "..."`, with the `matroska::Fold` constant each names.
pub const FOLDS: &[(&str, &str)] = &[("exact", "EXACT"), ("case", "CASE"), ("ci_ai", "CI_AI")];
/// `#[scope(..., when = ...)]`.
pub const WHEN: &str = "when";
/// `#[scope(author, watch = [author_id])]`: the columns a non-column field's value comes from.
pub const WATCH: &str = "watch";
/// `#[scope(..., name = ...)]`.
pub const NAME: &str = "name";
/// `#[sea_orm(table_name = "...")]` on a SeaORM model.
pub const TABLE_NAME: &str = "table_name";
/// `#[sea_orm(primary_key)]` on a SeaORM model's field.
pub const PRIMARY_KEY: &str = "primary_key";
/// `#[sea_orm(enum_name = "...")]`: the field's `Column` variant.
pub const ENUM_NAME: &str = "enum_name";
/// `#[sea_orm(ignore)]`: a field with no column.
pub const IGNORE: &str = "ignore";
/// `#[diesel(column_name = ...)]` on a Diesel model's field.
pub const COLUMN_NAME: &str = "column_name";
/// `#[diesel(embed)]`: a field holding another `Queryable`, not a column.
pub const EMBED: &str = "embed";
/// `#[diesel(select_expression = ...)]`: a field computed by an expression, not a column.
pub const SELECT_EXPRESSION: &str = "select_expression";
/// `#[diesel(belongs_to(Parent))]` / `#[diesel(belongs_to(Parent, foreign_key = col))]` on a
/// Diesel model: its foreign-key column is tracked.
pub const BELONGS_TO: &str = "belongs_to";
/// `foreign_key = col` in `belongs_to(..)`.
pub const FOREIGN_KEY: &str = "foreign_key";

/// The attributes of the struct.
#[derive(Default)]
pub struct Container {
    /// `#[cache(entity = "...")]`.
    pub entity: Option<LitStr>,
    /// `#[cache(crate = "...")]`.
    pub crate_path: Option<syn::Path>,
    /// `#[sea_orm(table_name = "...")]`: the struct is a SeaORM model.
    pub table_name: Option<LitStr>,
    /// The `#[scope(...)]` attributes, in order.
    pub scopes: Vec<ScopeAttr>,
    /// Some `#[diesel(...)]` on the struct: it is a Diesel model.
    pub diesel: bool,
    /// `#[diesel(table_name = path)]`: the `table!` module.
    pub diesel_table: Option<syn::Path>,
    /// `#[diesel(primary_key(a, b))]`: the key's columns.
    pub diesel_primary_key: Option<Vec<Ident>>,
    /// The foreign-key column of each `#[diesel(belongs_to(..))]`, as Diesel names it.
    pub diesel_foreign_keys: Vec<Ident>,
}

/// One `#[scope(field, ..., when = ..., name = ...)]`.
pub struct ScopeAttr {
    /// The first token of the attribute, for generated code.
    pub span: Span,
    /// The whole attribute, for errors spanning it.
    pub tokens: TokenStream,
    /// The fields, as written.
    pub fields: Vec<Ident>,
    /// `when = <expr>`: an `Fn(&Self) -> bool` deciding whether an object can be in such a list.
    pub when: Option<Expr>,
    /// `name = Ident`: the condition type's name.
    pub name: Option<Ident>,
    /// `watch = [column, ..]`: the columns the scope's values come from, as written (idents or
    /// string literals).
    pub watch: Option<Vec<WatchItem>>,
}

/// One column of `watch = [..]`: a field of the struct (its column's name is used) or a
/// column name as a string.
#[derive(Clone)]
pub enum WatchItem {
    /// `author_id`
    Field(Ident),
    /// `"author_id"`
    Column(LitStr),
}

/// The attributes of a field.
#[derive(Default)]
pub struct Field {
    /// `#[cache(key)]`, with the `key` token's span.
    pub key: Option<Span>,
    /// `#[cache(related)]`, with the `related` token's span.
    pub related: Option<Span>,
    /// `#[cache(fold = "...")]`: the `matroska::Fold` constant's name.
    pub fold: Option<Ident>,
    /// `#[sea_orm(primary_key)]`.
    pub sea_orm_primary_key: bool,
    /// `#[sea_orm(enum_name = "...")]`.
    pub sea_orm_enum_name: Option<String>,
    /// `#[sea_orm(ignore)]`.
    pub sea_orm_ignore: bool,
    /// `#[diesel(column_name = ...)]`.
    pub diesel_column_name: Option<Ident>,
    /// `#[diesel(embed)]` or `#[diesel(select_expression = ...)]`: not a column.
    pub diesel_not_column: Option<Span>,
}

impl Container {
    pub fn from_ast(cx: &Ctxt, attrs: &[Attribute]) -> Self {
        let mut out = Container::default();
        for attr in attrs {
            if attr.path().is_ident(CACHE) {
                let result = attr.parse_nested_meta(|meta| {
                    if meta.path.is_ident(ENTITY) {
                        let lit: LitStr = meta.value()?.parse()?;
                        if lit.value().is_empty() {
                            cx.error_spanned_by(&lit, "the entity name cannot be empty");
                        }
                        set_once(cx, &mut out.entity, lit, &meta, ENTITY);
                    } else if meta.path.is_ident(CRATE) {
                        let lit: LitStr = meta.value()?.parse()?;
                        match lit.parse::<syn::Path>() {
                            Ok(path) => set_once(cx, &mut out.crate_path, path, &meta, CRATE),
                            Err(_) => cx.error_spanned_by(
                                &lit,
                                format!(
                                    "`crate = {:?}` is not a path; write the name matroska is imported under, e.g. `crate = \"my_matroska\"`",
                                    lit.value()
                                ),
                            ),
                        }
                    } else if meta.path.is_ident(KEY) || meta.path.is_ident(RELATED) {
                        let name = path_name(&meta.path);
                        cx.error_spanned_by(
                            &meta.path,
                            format!("`#[cache({name})]` belongs on a field, not on the struct"),
                        );
                    } else {
                        cx.error_spanned_by(
                            &meta.path,
                            format!(
                                "unknown cache option `{}` on a struct; expected `entity = \"...\"` or `crate = \"...\"`",
                                path_name(&meta.path)
                            ),
                        );
                        skip_value(&meta);
                    }
                    Ok(())
                });
                if let Err(err) = result {
                    cx.syn_error(err);
                }
            } else if attr.path().is_ident(SCOPE) {
                if let Some(scope) = ScopeAttr::parse(cx, attr) {
                    out.scopes.push(scope);
                }
            } else if attr.path().is_ident(SEA_ORM) {
                // SeaORM's own derive validates its attribute; we only pick out the table name
                // and ignore whatever we cannot read.
                let _ = attr.parse_nested_meta(|meta| {
                    if meta.path.is_ident(TABLE_NAME) {
                        if let Ok(lit) = meta.value()?.parse::<LitStr>() {
                            out.table_name = Some(lit);
                        }
                    } else {
                        skip_value(&meta);
                    }
                    Ok(())
                });
            } else if attr.path().is_ident(DIESEL) {
                out.diesel = true;
                // Diesel's derives validate this attribute; we read the table and the key, and
                // report only what we cannot use (what we skip is Diesel's to judge).
                let _ = attr.parse_nested_meta(|meta| {
                    if meta.path.is_ident(TABLE_NAME) {
                        let value = meta.value()?;
                        if value.peek(LitStr) {
                            let lit: LitStr = value.parse()?;
                            cx.error_spanned_by(
                                &lit,
                                format!(
                                    "`table_name` takes the path of the `table!` module, not a string: `#[diesel(table_name = {})]`",
                                    lit.value()
                                ),
                            );
                        } else {
                            match value.parse::<syn::Path>() {
                                Ok(path) => out.diesel_table = Some(path),
                                Err(err) => {
                                    cx.syn_error(err.clone());
                                    return Err(err);
                                }
                            }
                        }
                    } else if meta.path.is_ident(PRIMARY_KEY) {
                        let mut columns = Vec::new();
                        let parsed = meta.parse_nested_meta(|column| {
                            match column.path.get_ident() {
                                Some(ident) => columns.push(ident.clone()),
                                None => cx.error_spanned_by(
                                    &column.path,
                                    "`primary_key(...)` names the key's columns: `#[diesel(primary_key(user_id, post_id))]`",
                                ),
                            }
                            Ok(())
                        });
                        if let Err(err) = parsed {
                            cx.syn_error(err.clone());
                            return Err(err);
                        }
                        out.diesel_primary_key = Some(columns);
                    } else if meta.path.is_ident(BELONGS_TO) {
                        // Diesel reports a malformed one; one not read here only leaves its
                        // column untracked (its queries coarse), never wrong.
                        let content;
                        syn::parenthesized!(content in meta.input);
                        if let Some(column) = foreign_key(&content) {
                            out.diesel_foreign_keys.push(column);
                        }
                        let _rest: TokenStream = content.parse()?;
                    } else {
                        skip_value(&meta);
                    }
                    Ok(())
                });
            }
        }
        out
    }
}

impl Field {
    pub fn from_ast(cx: &Ctxt, attrs: &[Attribute]) -> Self {
        let mut out = Field::default();
        for attr in attrs {
            if attr.path().is_ident(CACHE) {
                let result = attr.parse_nested_meta(|meta| {
                    if meta.path.is_ident(KEY) {
                        set_once(cx, &mut out.key, meta.path.span(), &meta, KEY);
                    } else if meta.path.is_ident(RELATED) {
                        set_once(cx, &mut out.related, meta.path.span(), &meta, RELATED);
                    } else if meta.path.is_ident(FOLD) {
                        let lit: LitStr = meta.value()?.parse()?;
                        match FOLDS.iter().find(|(name, _)| *name == lit.value()) {
                            Some((_, constant)) => {
                                let fold = Ident::new(constant, lit.span());
                                set_once(cx, &mut out.fold, fold, &meta, FOLD);
                            }
                            None => cx.error_spanned_by(
                                &lit,
                                format!(
                                    "unknown fold {:?}; expected one of {}",
                                    lit.value(),
                                    FOLDS
                                        .iter()
                                        .map(|(n, _)| format!("\"{n}\""))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            ),
                        }
                    } else if meta.path.is_ident(ENTITY) || meta.path.is_ident(CRATE) {
                        let name = path_name(&meta.path);
                        cx.error_spanned_by(
                            &meta.path,
                            format!(
                                "`#[cache({name} = ...)]` belongs on the struct, not on a field"
                            ),
                        );
                        skip_value(&meta);
                    } else {
                        cx.error_spanned_by(
                            &meta.path,
                            format!(
                                "unknown cache option `{}` on a field; expected `key`, `related` or `fold`",
                                path_name(&meta.path)
                            ),
                        );
                        skip_value(&meta);
                    }
                    Ok(())
                });
                if let Err(err) = result {
                    cx.syn_error(err);
                }
            } else if attr.path().is_ident(SCOPE) {
                cx.error_spanned_by(
                    attr,
                    "`#[scope(...)]` belongs on the struct, naming the fields it filters by: `#[scope(published, category)]`",
                );
            } else if attr.path().is_ident(SEA_ORM) {
                let _ = attr.parse_nested_meta(|meta| {
                    if meta.path.is_ident(PRIMARY_KEY) {
                        out.sea_orm_primary_key = true;
                    } else if meta.path.is_ident(IGNORE) {
                        out.sea_orm_ignore = true;
                    } else if meta.path.is_ident(ENUM_NAME) {
                        if let Ok(lit) = meta.value()?.parse::<LitStr>() {
                            out.sea_orm_enum_name = Some(lit.value());
                        }
                    } else {
                        skip_value(&meta);
                    }
                    Ok(())
                });
            } else if attr.path().is_ident(DIESEL) {
                let _ = attr.parse_nested_meta(|meta| {
                    if meta.path.is_ident(COLUMN_NAME) {
                        let value = meta.value()?;
                        // Diesel takes an identifier, or a string for a name that is not one.
                        if value.peek(LitStr) {
                            let lit: LitStr = value.parse()?;
                            out.diesel_column_name = syn::parse_str::<Ident>(&lit.value())
                                .ok()
                                .map(|i| Ident::new(&i.to_string(), lit.span()));
                        } else {
                            out.diesel_column_name = Some(value.parse()?);
                        }
                    } else if meta.path.is_ident(EMBED) {
                        out.diesel_not_column = Some(meta.path.span());
                    } else if meta.path.is_ident(SELECT_EXPRESSION) {
                        out.diesel_not_column = Some(meta.path.span());
                        skip_value(&meta);
                    } else {
                        skip_value(&meta);
                    }
                    Ok(())
                });
            }
        }
        out
    }
}

/// One item of `#[scope(...)]`: a field, or an `option = value`.
enum ScopeItem {
    Field(Ident),
    Option(Ident, Expr),
}

impl Parse for ScopeItem {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        // `Ident::parse_any` would accept keywords; a field named like a keyword is written
        // `r#type`, which `Ident` parses.
        let ident: Ident = input.parse()?;
        if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            Ok(ScopeItem::Option(ident, input.parse()?))
        } else {
            Ok(ScopeItem::Field(ident))
        }
    }
}

impl ScopeAttr {
    fn parse(cx: &Ctxt, attr: &Attribute) -> Option<Self> {
        let items = match attr.parse_args_with(Punctuated::<ScopeItem, Token![,]>::parse_terminated)
        {
            Ok(items) => items,
            Err(err) => {
                let err = if matches!(attr.meta, syn::Meta::Path(_)) {
                    syn::Error::new_spanned(
                        attr,
                        "`#[scope]` needs the fields it filters by: `#[scope(published, category)]`",
                    )
                } else {
                    err
                };
                cx.syn_error(err);
                return None;
            }
        };
        let mut scope = ScopeAttr {
            span: attr.span(),
            tokens: attr.to_token_stream(),
            fields: Vec::new(),
            when: None,
            name: None,
            watch: None,
        };
        for item in items {
            match item {
                ScopeItem::Field(ident) => {
                    if let Some(first) = scope.fields.iter().find(|f| **f == ident) {
                        let mut err = syn::Error::new(
                            ident.span(),
                            format!("field `{ident}` is named twice in this scope"),
                        );
                        err.combine(syn::Error::new(first.span(), "first named here"));
                        cx.syn_error(err);
                    } else {
                        scope.fields.push(ident);
                    }
                }
                ScopeItem::Option(option, value) if option == WHEN => {
                    if scope.when.is_some() {
                        cx.error_spanned_by(&option, "`when` is given twice in this scope");
                    }
                    scope.when = Some(value);
                }
                ScopeItem::Option(option, value) if option == NAME => match value {
                    Expr::Path(p) if p.qself.is_none() && p.path.get_ident().is_some() => {
                        if scope.name.is_some() {
                            cx.error_spanned_by(&option, "`name` is given twice in this scope");
                        }
                        scope.name = p.path.get_ident().cloned();
                    }
                    other => cx.error_spanned_by(
                        other,
                        "`name` takes the condition type's name, e.g. `name = FantasyBooks`",
                    ),
                },
                ScopeItem::Option(option, value) if option == WATCH => {
                    let items: Vec<Expr> = match value {
                        Expr::Array(array) => array.elems.into_iter().collect(),
                        other => vec![other],
                    };
                    let mut watch = Vec::new();
                    for item in items {
                        match item {
                            Expr::Path(p) if p.qself.is_none() && p.path.get_ident().is_some() => {
                                if let Some(ident) = p.path.get_ident() {
                                    watch.push(WatchItem::Field(ident.clone()));
                                }
                            }
                            Expr::Lit(syn::ExprLit {
                                lit: syn::Lit::Str(lit),
                                ..
                            }) => watch.push(WatchItem::Column(lit)),
                            other => cx.error_spanned_by(
                                other,
                                "`watch` takes the columns the values come from: `watch = [author_id]` or `watch = [\"author_id\"]`",
                            ),
                        }
                    }
                    if scope.watch.is_some() {
                        cx.error_spanned_by(&option, "`watch` is given twice in this scope");
                    }
                    scope.watch = Some(watch);
                }
                ScopeItem::Option(option, _) => cx.error_spanned_by(
                    &option,
                    format!(
                        "unknown scope option `{option}`; expected a field name, `when = <fn(&Self) -> bool>`, `name = TypeName` or `watch = [column, ..]`"
                    ),
                ),
            }
        }
        if scope.fields.is_empty() {
            cx.error_spanned_by(
                attr,
                "a scope needs at least one field to filter by: `#[scope(published, category)]`",
            );
            return None;
        }
        Some(scope)
    }
}

/// Sets `slot` once; a second occurrence is an error at the repeated option.
fn set_once<T>(cx: &Ctxt, slot: &mut Option<T>, value: T, meta: &ParseNestedMeta<'_>, name: &str) {
    if slot.is_some() {
        cx.error_spanned_by(&meta.path, format!("`{name}` is given twice"));
    } else {
        *slot = Some(value);
    }
}

/// Consumes `= value` or `(...)` after an option we do not read, so parsing can go on.
fn skip_value(meta: &ParseNestedMeta<'_>) {
    if meta.input.peek(Token![=]) {
        let _ = meta.value().and_then(|v| v.parse::<Expr>());
    } else if meta.input.peek(syn::token::Paren) {
        let _ = meta.parse_nested_meta(|nested| {
            skip_value(&nested);
            Ok(())
        });
    }
}

/// The foreign-key column of `belongs_to(Parent)` / `belongs_to(Parent, foreign_key = col)`,
/// by Diesel's own rule (`diesel_derives`' `infer_foreign_key`): `col`, else the last segment
/// of `Parent` with each uppercase letter after the first lowered and preceded by `_`, then
/// `_id` (`BlogPost` → `blog_post_id`).
fn foreign_key(content: ParseStream<'_>) -> Option<Ident> {
    let parent: syn::TypePath = content.parse().ok()?;
    if content.peek(Token![,]) {
        content.parse::<Token![,]>().ok()?;
        let option: Ident = content.parse().ok()?;
        if option == FOREIGN_KEY {
            content.parse::<Token![=]>().ok()?;
            return content.parse::<Ident>().ok();
        }
    }
    let last = parent.path.segments.last()?;
    let name = last.ident.to_string();
    let mut chars = name.chars();
    let mut snake: String = chars.next()?.to_lowercase().collect();
    for c in chars {
        if c.is_uppercase() {
            snake.push('_');
            snake.extend(c.to_lowercase());
        } else {
            snake.push(c);
        }
    }
    Some(Ident::new(&format!("{snake}_id"), last.ident.span()))
}

fn path_name(path: &syn::Path) -> String {
    path.segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}
